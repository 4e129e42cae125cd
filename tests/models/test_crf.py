"""The linear-chain CRF against brute force: every tag sequence enumerated, scored and normalised by hand."""

from __future__ import annotations

import itertools

import pytest
import torch

from lmforge.models.crf import NEG, LinearChainCRF, bio_decode, bio_rules, gather_words, viterbi

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def path_score(crf: LinearChainCRF, scores: torch.Tensor, path: tuple[int, ...]) -> torch.Tensor:
    transitions, start, end = crf.scores()
    total = start[path[0]] + scores[0, path[0]]
    for t in range(1, len(path)):
        total = total + transitions[path[t - 1], path[t]] + scores[t, path[t]]
    return total + end[path[-1]]


@pytest.fixture
def crf() -> LinearChainCRF:
    torch.manual_seed(0)
    crf = LinearChainCRF(LABELS)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    return crf.requires_grad_(False)


def test_nll_and_decoding_equal_brute_force_over_ragged_rows(crf):
    scores = torch.randn(3, 4, len(LABELS))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    gold = torch.tensor([[1, 2, 0, 3], [3, 4, 0, 0], [0, 0, 0, 0]])
    expected, best = 0.0, []
    for b in range(3):
        n = int(mask[b].sum())
        paths = list(itertools.product(range(len(LABELS)), repeat=n))
        all_scores = torch.stack([path_score(crf, scores[b], p) for p in paths])
        expected += float(torch.logsumexp(all_scores, 0) - path_score(crf, scores[b], tuple(gold[b, :n].tolist())))
        best.append(list(paths[int(all_scores.argmax())]) + [0] * (4 - n))
    assert float(crf.nll(scores, gold, mask)) == pytest.approx(expected, rel=1e-5)
    assert crf.decode(scores, mask).tolist() == best


def test_bio_rules_forbid_i_after_o_or_another_type_and_at_the_start():
    allowed, can_start = bio_rules(LABELS)
    assert can_start.tolist() == [True, True, False, True, False]
    assert allowed[LABELS.index("B-PER"), LABELS.index("I-PER")] and allowed[LABELS.index("I-PER"), LABELS.index("I-PER")]
    assert not allowed[LABELS.index("O"), LABELS.index("I-PER")]
    assert not allowed[LABELS.index("B-LOC"), LABELS.index("I-PER")]
    assert allowed[:, LABELS.index("B-LOC")].all() and allowed[:, 0].all()
    # argmax would say O I-PER I-PER; under the rules the best is a whole entity
    log_probs = torch.log(torch.tensor([[[0.5, 0.1, 0.4, 0, 0], [0.1, 0, 0.9, 0, 0], [0.2, 0, 0.8, 0, 0]]]) + 1e-9)
    best = bio_decode(log_probs, torch.ones(1, 3, dtype=torch.bool), LABELS)
    assert [LABELS[t] for t in best[0]] == ["B-PER", "I-PER", "I-PER"]


def test_ill_formed_gold_is_read_as_conlleval_does_and_keeps_the_loss_finite(crf):
    tags = torch.tensor([[2, 2, 0, 2, 4]])  # I-PER I-PER O I-PER I-LOC
    assert [LABELS[t] for t in crf.well_formed(tags)[0]] == ["B-PER", "I-PER", "O", "B-PER", "B-LOC"]
    nll = crf.nll(torch.randn(1, 5, len(LABELS)), tags, torch.ones(1, 5, dtype=torch.bool))
    assert 0 < float(nll) < -NEG / 10


def test_gather_words_moves_each_rows_words_left_in_order():
    x = torch.arange(12).view(2, 6)
    words = torch.tensor([[0, 1, 1, 0, 1, 0], [0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    got, mask = gather_words(x, words)
    assert got[0].tolist() == [1, 2, 4] and got[1, 0] == 7
    assert mask.tolist() == [[True, True, True], [True, False, False]]


def test_viterbi_leaves_rows_without_words_at_tag_zero():
    out = viterbi(torch.randn(2, 3, 3), torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool),
                  torch.zeros(3, 3), torch.zeros(3), torch.zeros(3))
    assert out[0, 2] == 0 and out[1].tolist() == [0, 0, 0]
