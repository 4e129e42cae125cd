"""CCNet-style perplexity filtering under a tiny GPT trained on reference text (reviews and Python docs)."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest

from lmforge.errors import ConfigError
from lmforge.pipeline.stage import run_chain
from lmforge.records import Record

torch = pytest.importorskip("torch")

from lmforge.quality.perplexity import PerplexityFilter  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_HELD = 40  # held-out documents per language, each also scored shuffled: 80 per language


def shuffled(record: Record, seed: int) -> Record:
    """The same characters (Chinese) or words (English) in a random order: the words stay, the language goes."""
    rng = random.Random(seed)
    parts = record.text.split() if record.lang == "en" else list(record.text)
    rng.shuffle(parts)
    return Record(id=record.id + "-shuffled", text=(" " if record.lang == "en" else "").join(parts), lang=record.lang)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(checkpoint dir, tokenizer dir, held-out documents and their shuffled twins) of a GPT trained briefly
    on the other documents of both corpora."""
    from lmforge.collect.builtin import BuiltinConfig, builtin_records
    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.tokenize.bpe import TokenizerConfig, load_tokenizer, train_tokenizer
    from lmforge.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("reference")
    docs = list(builtin_records(BuiltinConfig(corpora=["reviews", "python_docs"], max_docs_per_corpus=160)))
    held = [r for lang in ("zh", "en") for r in [d for d in docs if d.lang == lang][:N_HELD]]
    train = [d for d in docs if d not in held]
    tok_dir = train_tokenizer([d.text for d in train], TokenizerConfig(vocab_size=600), root / "tokenizer")
    tok = load_tokenizer(tok_dir)
    eos = tok.token_to_id("<|endoftext|>")
    stream = np.array([t for d in train for t in [eos, *tok.encode(d.text).ids]], dtype=np.int64)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=64, n_layer=1, n_head=2, n_embd=48))
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3)
    rng = np.random.default_rng(0)
    for _ in range(200):
        starts = rng.integers(0, len(stream) - 65, size=16)
        batch = torch.from_numpy(np.stack([stream[s : s + 65] for s in starts]))  # (16, 65)
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    ckpt = save_checkpoint(model.eval(), model.config, root / "ckpt")
    twins = [shuffled(r, i) for i, r in enumerate(held)]
    return ckpt, tok_dir, held + twins


def run(stage, docs):
    dropped: list[Record] = []
    out, stats = run_chain([stage], [Record(r.id, r.text, lang=r.lang) for r in docs], dropped.append)
    kept = list(out)
    return kept, dropped, stats[0]


@pytest.fixture(scope="module")
def scored(reference):
    ckpt, tok_dir, docs = reference
    kept, dropped, _ = run(PerplexityFilter(model=str(ckpt), tokenizer=str(tok_dir), max_tokens=200,
                                            batch_size=32, model_batch_size=16), docs)
    assert not dropped  # nothing is cut by default: only scored and bucketed
    return {r.id: r for r in kept}


def test_shuffled_text_is_more_perplexing_and_lands_in_the_tail(scored):
    ppl = {k: r.meta["quality"]["perplexity"] for k, r in scored.items()}
    for lang in ("zh", "en"):
        real = [k for k, r in scored.items() if r.lang == lang and not k.endswith("-shuffled")]
        assert sum(ppl[k + "-shuffled"] > ppl[k] for k in real) >= 0.95 * len(real)
        tail = {twin: sum(scored[k + twin].meta["quality"]["bucket"] == "tail" for k in real) / len(real)
                for twin in ("", "-shuffled")}
        assert tail["-shuffled"] > tail[""] + 0.25  # 0.65 vs 0.15 in Chinese, 0.55 vs 0.25 in English


def test_buckets_split_30_30_40_per_language(scored):
    counts = Counter((r.lang, r.meta["quality"]["bucket"]) for r in scored.values())
    assert counts == {("zh", "head"): 24, ("zh", "middle"): 24, ("zh", "tail"): 32,
                      ("en", "head"): 24, ("en", "middle"): 24, ("en", "tail"): 32}
    for lang in ("zh", "en"):  # the buckets are perplexity ranges: every head document beats every middle one
        by = {b: [r.meta["quality"]["perplexity"] for r in scored.values()
                  if r.lang == lang and r.meta["quality"]["bucket"] == b] for b in ("head", "middle", "tail")}
        assert max(by["head"]) <= min(by["middle"]) and max(by["middle"]) <= min(by["tail"])


def test_perplexity_is_what_lmforge_evaluate_computes(reference, scored):
    from lmforge.evaluate import lm_scores
    from lmforge.models.checkpoint_io import load_checkpoint
    from lmforge.tokenize.bpe import load_tokenizer

    ckpt, tok_dir, docs = reference
    model, tok = load_checkpoint(ckpt), load_tokenizer(tok_dir)
    eos = tok.token_to_id("<|endoftext|>")
    sizes = {r.id: len(tok.encode(r.text).ids) for r in docs}
    middling = max((r for r in docs if sizes[r.id] < 200), key=lambda r: sizes[r.id])
    assert sizes[middling.id] > 64  # scored in windows of the model's 64-token context
    expected = lm_scores(model, texts=[middling.text], tokenizer=tok, bos_id=eos)  # what `lmforge evaluate` does
    assert scored[middling.id].meta["quality"]["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-5)
    longest = max(docs, key=lambda r: sizes[r.id])
    assert sizes[longest.id] > 200  # only its first max_tokens tokens are scored
    for r in [longest, *docs[:3], *docs[-3:]]:
        expected = lm_scores(model, [[eos, *tok.encode(r.text).ids[:200]]])
        assert scored[r.id].meta["quality"]["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-5)


def test_keep_head_and_middle_drops_the_tail(reference, scored):
    ckpt, tok_dir, docs = reference
    kept, dropped, stats = run(PerplexityFilter(model=str(ckpt), tokenizer=str(tok_dir), max_tokens=200,
                                                keep=["head", "middle"]), docs)
    assert {r.id for r in kept} == {k for k, r in scored.items() if r.meta["quality"]["bucket"] != "tail"}
    assert stats.dropped == {"quality_below_cutoff": 64}
    assert all(r.meta["quality"]["bucket"] == "tail" for r in dropped)
    worst_kept = max(r.meta["quality"]["perplexity"] for r in kept if r.lang == "zh")
    assert dropped[0].meta["perplexity_filter"]["cutoff"] == pytest.approx(
        max(r.meta["quality"]["perplexity"] for r in kept if r.lang == dropped[0].lang), rel=1e-4)
    assert worst_kept < min(r.meta["quality"]["perplexity"] for r in dropped if r.lang == "zh")


def test_fixed_edges_and_a_perplexity_ceiling_per_language(reference, scored):
    ckpt, tok_dir, docs = reference
    ppl = {k: r.meta["quality"]["perplexity"] for k, r in scored.items()}
    zh = sorted(v for k, v in ppl.items() if scored[k].lang == "zh")
    edges = (float(zh[9]) + 1e-3, float(zh[49]) + 1e-3)  # 10 head, 40 middle, 30 tail documents in Chinese
    ceiling = float(np.median([v for k, v in ppl.items() if scored[k].lang == "en"]))
    kept, dropped, _ = run(PerplexityFilter(model=str(ckpt), tokenizer=str(tok_dir), max_tokens=200,
                                            bucket_perplexity={"zh": edges}, max_perplexity={"en": ceiling}), docs)
    buckets = Counter((r.lang, r.meta["quality"]["bucket"]) for r in kept + dropped)
    assert [buckets["zh", b] for b in ("head", "middle", "tail")] == [10, 40, 30]
    assert [buckets["en", b] for b in ("head", "middle", "tail")] == [24, 24, 32]  # no edges for en: percentiles
    assert {r.id for r in dropped} == {k for k, v in ppl.items() if scored[k].lang == "en" and v > ceiling}
    assert len(dropped) == 40


def test_an_empty_document_is_unscored(reference):
    ckpt, tok_dir, _ = reference
    kept, dropped, _ = run(PerplexityFilter(model=str(ckpt), tokenizer=str(tok_dir)),
                           [Record("a", "这本书的内容很好。", lang="zh"), Record("b", "", lang="zh")])
    assert [r.id for r in kept] == ["a"] and [(r.id, r.meta["drop_reason"]) for r in dropped] == [
        ("b", "quality_unscored")]
    assert math.isfinite(kept[0].meta["quality"]["perplexity"]) and kept[0].meta["quality"]["bucket"] == "head"


def test_config_mistakes_name_the_field(reference, tmp_path):
    ckpt, tok_dir, _ = reference
    with pytest.raises(ConfigError, match="give model .* or kenlm .*, one of them"):
        PerplexityFilter()
    with pytest.raises(ConfigError, match="threshold is in -ln\\(perplexity\\) here; give max_perplexity"):
        PerplexityFilter(model=str(ckpt), threshold=-5.0)
    with pytest.raises(ConfigError, match=r"keep must be \[head\], \[head, middle\] or all three"):
        PerplexityFilter(model=str(ckpt), keep=["head", "tail"])
    with pytest.raises(ConfigError, match="give one of top_fraction, max_perplexity, keep"):
        PerplexityFilter(model=str(ckpt), keep=["head"], top_fraction=0.5)
    with pytest.raises(ConfigError, match=r"bucket_perplexity\.zh must be two increasing"):
        PerplexityFilter(model=str(ckpt), bucket_perplexity={"zh": [300, 100]})
    with pytest.raises(ConfigError, match=r"perplexity_filter\.model: .*does not exist"):
        PerplexityFilter(model=str(tmp_path / "nowhere"))


def test_a_kenlm_model_file(tmp_path):
    """A unigram ARPA model written by hand: every word's probability is known, so is the perplexity."""
    pytest.importorskip("kenlm")
    probs = {"<s>": None, "</s>": 0.2, "<unk>": 0.1, "good": 0.4, "text": 0.3}
    lines = ["\\data\\", f"ngram 1={len(probs)}", "", "\\1-grams:"]
    lines += [f"{-99 if p is None else math.log10(p):.6f}\t{w}" for w, p in probs.items()]
    (tmp_path / "uni.arpa").write_text("\n".join([*lines, "", "\\end\\", ""]), encoding="utf-8")
    kept, _, _ = run(PerplexityFilter(kenlm=str(tmp_path / "uni.arpa")),
                     [Record("a", "good text\ngood", lang="en")])
    # words good, text, </s>, good, </s>: 0.4 * 0.3 * 0.2 * 0.4 * 0.2 over 5 predictions
    expected = (0.4 * 0.3 * 0.2 * 0.4 * 0.2) ** (-1 / 5)
    assert kept[0].meta["quality"]["perplexity"] == pytest.approx(expected, rel=1e-4)


def test_kenlm_scores_are_read_per_line_in_words(tmp_path, monkeypatch):
    """Without the kenlm package: a stand-in whose log10 probability is -1 per word and per line end, so the
    perplexity per word must be exactly 10 and a line's words are what the stage passes."""
    import importlib.machinery
    import types

    from lmforge.quality import perplexity

    seen = []

    class Model:
        def __init__(self, path):
            self.path = path

        def score(self, sentence, bos=True, eos=True):
            seen.append((sentence, bos, eos))
            return -float(len(sentence.split()) + 1)

    fake = types.ModuleType("kenlm")
    fake.__spec__ = importlib.machinery.ModuleSpec("kenlm", None)
    fake.Model = Model
    monkeypatch.setitem(__import__("sys").modules, "kenlm", fake)
    perplexity.load_kenlm.cache_clear()
    (tmp_path / "lm.arpa").write_text("\\data\\\n", encoding="utf-8")
    kept, dropped, _ = run(PerplexityFilter(kenlm=str(tmp_path / "lm.arpa")),
                           [Record("a", "good  text\n\n  more good text ", lang="en"), Record("b", " \n", lang="en")])
    perplexity.load_kenlm.cache_clear()
    assert seen == [("good text", True, True), ("more good text", True, True)]
    assert kept[0].meta["quality"]["perplexity"] == pytest.approx(10.0)
    assert [(r.id, r.meta["drop_reason"]) for r in dropped] == [("b", "quality_unscored")]
