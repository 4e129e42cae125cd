"""The report's quality section on a real run: a perplexity filter over built-in text and some markup."""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MARKUP = ["<b>Bold</b> claims & <i>italic</i> asides about the Python language reference.",
          "<script>alert(1)</script> A function definition binds the function name to an object."]


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory):
    """A run whose pipeline is one perplexity filter (an untrained GPT) keeping the head and middle buckets,
    over Chinese reviews and English documents full of markup."""
    import torch
    import yaml

    from lmforge.collect.builtin import BuiltinConfig, builtin_records
    from lmforge.flow import run_recipe
    from lmforge.flow.recipe import parse_recipe
    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer
    from lmforge.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("quality-report")
    texts = [r.text for r in builtin_records(BuiltinConfig(corpora=["reviews", "python_docs"], max_docs_per_corpus=60))]
    tok = train_tokenizer(texts, TokenizerConfig(vocab_size=400), root / "tokenizer")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=400, block_size=64, n_layer=1, n_head=2, n_embd=32))
    ckpt = save_checkpoint(model, model.config, root / "ckpt")
    (root / "markup.jsonl").write_text("".join(json.dumps({"text": f"[{i}] " + t * (i + 1), "lang": "en"}) + "\n"
                                              for i in range(10) for t in MARKUP), encoding="utf-8")
    recipe = parse_recipe(yaml.safe_load(f"""
name: quality-report
input:
  builtin: {{corpora: [reviews], max_docs_per_corpus: 48}}
  files: [{root / "markup.jsonl"}]
  shard_size: 25
executor: {{kind: local, workers: 1}}
pipeline:
  - perplexity_filter: {{model: {ckpt}, tokenizer: {tok}, max_tokens: 48, keep: [head, middle]}}
"""), where="quality report test")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_recipe(recipe, root / "run", base_dir=root)
    finally:
        torch.set_num_threads(threads)
    return result


def records(run_dir):
    """Every document the filter saw, with -ln(perplexity) and whether it was kept."""
    from lmforge.records import read_parquet

    (stage,) = sorted((run_dir / "stages").glob("01-*"))
    out = []
    for path in sorted(stage.glob("*.parquet")):
        for r in read_parquet(path):
            out.append((r.lang, -math.log(r.meta["quality"]["perplexity"]), len(r.text), path.name.startswith("shard")))
    return out


def rows(fragment: str) -> list[list[str]]:
    found = [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
             for row in re.findall(r"<tr>(.*?)</tr>", fragment, re.S)]
    return [r for r in found if r]


def quality_blocks(run_dir):
    from lmforge.report.build import build_sections
    from lmforge.report.run import Run

    (section,) = [s for s in build_sections(Run.open(run_dir)) if s.id == "quality"]
    return section.blocks


def test_the_section_counts_what_each_threshold_keeps(quality_run):
    from lmforge.report.html import Table

    page = quality_run.report.read_text(encoding="utf-8")
    start = page.index('<section id="quality">')
    section = page[start : page.index("</section>", start)]
    assert "<h2>Quality scores</h2>" in section
    titles = re.findall(r"<figcaption>([^<]*)</figcaption>", section)
    # one histogram per language, the language with the most documents first
    assert titles == ["perplexity_filter: perplexity scores, zh", "perplexity_filter: perplexity scores, en"]
    docs = records(quality_run.run_dir)
    seen = Counter(lang for lang, *_ in docs)
    assert seen == {"en": 20, "zh": 48}
    (table,) = [b for b in quality_blocks(quality_run.run_dir) if isinstance(b, Table) and not b.wide_text]
    assert [r[0] for r in table.rows if r[3] == "cutoff"] == ["zh", "en"]
    assert len(table.rows) >= 6 and [r[4] for r in table.rows] == [
        int(c) for c in (r[4] for r in rows(section) if len(r) == 7)]  # the page shows the same counts
    for lang, threshold, perplexity, rule, kept, share, char_share in table.rows:
        assert perplexity == pytest.approx(math.exp(-threshold))
        mine = [(s, n, was_kept) for g, s, n, was_kept in docs if g == lang]
        wanted = [(s, n, was_kept) for s, n, was_kept in mine if s >= threshold - 1e-7]  # meta rounds perplexities to 1e-6
        assert kept == len(wanted)
        assert share == pytest.approx(100 * len(wanted) / len(mine))
        assert char_share == pytest.approx(100 * sum(n for _, n, _ in wanted) / sum(n for _, n, _ in mine))
        if rule == "cutoff":  # the cutoff keeps exactly what the filter kept: the head and middle buckets
            assert all(was_kept for *_, was_kept in wanted) and kept == math.ceil(0.6 * seen[lang])


def test_examples_are_escaped_short_and_two_per_band(quality_run):
    page = quality_run.report.read_text(encoding="utf-8")
    start = page.index('<section id="quality">')
    section = page[start : page.index("</section>", start)]
    examples = [r for r in rows(section) if len(r) == 5]
    bands = Counter((lang, band) for lang, band, *_ in examples)
    assert len(bands) == 8 and set(bands.values()) == {2}  # four quartile bands in each language
    assert {verdict for *_, verdict, _ in examples} == {"kept", "dropped"}
    assert all(len(text) <= 240 for *_, text in examples)
    assert "<script>alert" not in page and "<b>Bold" not in page
    english = [text for lang, *_, text in examples if lang == "en"]
    assert all("<b>Bold</b> claims" in text or "<script>alert(1)</script>" in text for text in english)
    assert any(text.endswith("…") for text in english)  # long documents are cut
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section and "&lt;b&gt;Bold&lt;/b&gt;" in section


def test_scores_are_sampled_with_a_bound(quality_run):
    from lmforge.report.quality import find_scorers, read_scorer

    (stage_dir,) = find_scorers(quality_run.run_dir)
    full, small = read_scorer(stage_dir), read_scorer(stage_dir, max_scores=10)
    assert {k: (len(v.scores), v.seen) for k, v in full.langs.items()} == {"en": (20, 20), "zh": (48, 48)}
    assert {k: (len(v.scores), v.seen) for k, v in small.langs.items()} == {"en": (10, 20), "zh": (10, 48)}
    assert set(small.langs["zh"].scores) <= set(full.langs["zh"].scores)
    assert full.files_read == full.files_total == 3 and full.key == "perplexity" and full.value == "perplexity"
