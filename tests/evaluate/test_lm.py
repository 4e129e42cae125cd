"""Perplexity and bits per byte: one division of total NLL by total tokens, on any kind of model output."""

from __future__ import annotations

import math
import types

import pytest

from lmforge.errors import InputError, UserError
from lmforge.evaluate import bits_per_byte, lm_scores, perplexity_from_nll

torch = pytest.importorskip("torch")
nn = torch.nn


def test_formulas_by_hand():
    assert perplexity_from_nll(10 * math.log(4), 10) == pytest.approx(4.0)  # every token at p = 1/4
    assert bits_per_byte(8 * math.log(2), 8) == pytest.approx(1.0)  # one bit per byte
    assert perplexity_from_nll(1e6, 1) == math.inf
    with pytest.raises(InputError, match="total_tokens must be positive"):
        perplexity_from_nll(1.0, 0)
    with pytest.raises(InputError, match="total_bytes must be positive"):
        bits_per_byte(1.0, 0)


def test_total_nll_perplexity_is_not_the_mean_of_perplexities():
    # sequence A: 1 predicted token with NLL 4.0; sequence B: 9 tokens with NLL 1.0 each
    # per token: exp((4 + 9) / 10) = exp(1.3) = 3.669; mean of per-sequence values: (e^4 + e^1) / 2 = 28.66
    corpus = perplexity_from_nll(4.0 + 9.0, 1 + 9)
    mean_of_sequences = (perplexity_from_nll(4.0, 1) + perplexity_from_nll(9.0, 9)) / 2
    assert corpus == pytest.approx(math.exp(1.3))
    assert mean_of_sequences == pytest.approx((math.e**4 + math.e) / 2)
    assert mean_of_sequences > 7 * corpus  # the short, hard sequence dominates the mean


class Bigram(nn.Module):
    """Next-token logits from the previous token only: a model whose NLL is easy to compute by hand."""

    def __init__(self, vocab: int = 11, output: str = "tensor") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(vocab, vocab)
        self.output = output

    def forward(self, ids):
        logits = self.table(ids)
        if self.output == "tuple":  # lmforge's GPT
            return logits, None
        if self.output == "object":  # transformers' CausalLMOutput
            return types.SimpleNamespace(logits=logits, loss=None)
        return logits


def _nll_by_hand(model: Bigram, seqs: list[list[int]]) -> list[tuple[float, int]]:
    out = []
    with torch.no_grad():
        for seq in seqs:
            logp = torch.log_softmax(model.table.weight[seq[:-1]], dim=-1)
            out.append((-sum(logp[i, seq[i + 1]].item() for i in range(len(seq) - 1)), len(seq) - 1))
    return out


SEQS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 1, 2, 3, 4, 5], [7, 7], [3, 1, 4, 1, 5, 9, 2, 6]]


@pytest.mark.parametrize("output", ["tensor", "tuple", "object"])
def test_lm_scores_sums_over_tokens_of_unequal_sequences(output):
    model = Bigram(output=output)
    per_seq = _nll_by_hand(model, SEQS)
    total_nll, total_tokens = sum(n for n, _ in per_seq), sum(t for _, t in per_seq)
    scores = lm_scores(model, SEQS, batch_size=3)  # padding inside each batch
    assert scores["tokens"] == total_tokens == 2 + 11 + 1 + 7
    assert scores["nll"] == pytest.approx(total_nll, rel=1e-5)
    assert scores["perplexity"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-5)
    mean_of_sequences = sum(math.exp(n / t) for n, t in per_seq) / len(per_seq)
    assert abs(scores["perplexity"] - mean_of_sequences) > 0.01 * scores["perplexity"]
    assert "bits_per_byte" not in scores  # token ids alone have no bytes


def test_windows_and_batches_do_not_change_the_total():
    model = Bigram()
    whole = lm_scores(model, SEQS, max_length=100, batch_size=1)
    # windows of 3 predictions overlap by one token, so each target keeps its previous token
    windowed = lm_scores(model, [torch.tensor(s) for s in SEQS], max_length=3, batch_size=2)
    assert windowed["tokens"] == whole["tokens"]
    assert windowed["nll"] == pytest.approx(whole["nll"], rel=1e-5)
    batch = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])  # a 2-D batch is two sequences
    assert lm_scores(model, [batch])["tokens"] == 6


def test_matches_windowed_validation_perplexity_of_lmforge_gpt():
    np = pytest.importorskip("numpy")
    from lmforge.evaluate.perplexity import perplexity
    from lmforge.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=16))
    tokens = np.random.default_rng(0).integers(0, 40, size=3 * 8 + 1)
    expected = perplexity(model, tokens, seq_len=8, batch_size=2)
    model.train()
    scores = lm_scores(model, [tokens.tolist()])  # block_size 8 taken from model.config
    assert scores["tokens"] == 24
    assert scores["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert model.training  # mode restored


class ByteTokenizer:
    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


class Uniform(nn.Module):
    """Equal logits over 257 ids (256 bytes + BOS): every token costs ln 257 nats."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        return torch.zeros(*ids.shape, 257)


def test_bits_per_byte_from_texts():
    texts = ["ab中文", "x"]  # 2 + 2 * 3 bytes, and 1 byte
    scores = lm_scores(Uniform(), texts=texts, tokenizer=ByteTokenizer(), bos_id=256)
    # with BOS every byte is predicted: 9 tokens, each ln 257 -> perplexity 257, log2(257) bits per byte
    assert scores["bytes"] == scores["tokens"] == 9
    assert scores["perplexity"] == pytest.approx(257)
    assert scores["bits_per_byte"] == pytest.approx(math.log2(257))
    # without BOS the first token of each text is context only: 7 + 0 predicted tokens over 9 bytes
    scores = lm_scores(Uniform(), texts=texts, tokenizer=ByteTokenizer())
    assert scores["tokens"] == 7
    assert scores["bits_per_byte"] == pytest.approx(7 * math.log(257) / (math.log(2) * 9))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"sequences": []}, "nothing to score"),
        ({"sequences": [[1], [2]]}, "fewer than 2 tokens"),
        ({}, "exactly one of"),
        ({"texts": ["a"]}, "needs tokenizer="),
        ({"texts": "abc", "tokenizer": ByteTokenizer()}, "not a single string"),
    ],
)
def test_errors_are_one_clear_line(kwargs, words):
    with pytest.raises(UserError, match=words) as info:
        lm_scores(Bigram(), **kwargs)
    assert "\n" not in str(info.value)


def test_model_without_logits_is_a_clear_error():
    class Bad(nn.Module):
        def forward(self, ids):
            return {"hidden": ids}

    with pytest.raises(UserError, match="needs logits"):
        lm_scores(Bad(), [[1, 2]])
