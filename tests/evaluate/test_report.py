"""Reports: Markdown tables people read, strict JSON tools read, and a lazy, light package import."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from lmforge.errors import InputError
from lmforge.evaluate import classification_report, compare_table, to_markdown, write_report


def test_markdown_of_a_classification_report():
    md = to_markdown(classification_report(["正面", "负面", "正面"], ["正面", "正面", "正面"]), title="sentiment")
    assert md.startswith("## sentiment\n")
    assert "| accuracy | 0.6667 |" in md
    assert "| macro.f1 | 0.4000 |" in md  # (0.8 + 0) / 2
    assert "### per_class" in md and "| 正面 | 0.6667 | 1.0000 | 0.8000 | 2 |" in md
    assert "| true \\ predicted | 正面 | 负面 |" in md and "| 负面 | 1 | 0 |" in md
    assert "| labels |" not in md  # shown as the matrix header instead


def test_markdown_of_lists_and_named_runs():
    md = to_markdown([{"model": "a|b", "f1": 0.5, "extra": {"n": 3}}, {"model": "c", "f1": 1 / 3}])
    lines = md.splitlines()
    assert lines[0] == "| # | model | f1 | extra.n |"
    assert lines[2] == "| 0 | a\\|b | 0.5000 | 3 |" and lines[3] == "| 1 | c | 0.3333 | — |"
    md = to_markdown({"before": {"ppl": 2000.0}, "after": {"ppl": 150.25}})
    assert "| before | 2000.0000 |" in md and "| after | 150.2500 |" in md
    with pytest.raises(InputError, match="dict or a list of dicts"):
        to_markdown("f1=0.5")


def test_compare_table_with_delta():
    table = compare_table({"from scratch": {"f1": 0.5, "perplexity": 180.0, "tokenize": "zh"},
                           "fine-tuned": {"f1": 0.75, "perplexity": 150.5}})
    lines = table.splitlines()
    assert lines[0] == "| metric | from scratch | fine-tuned | Δ |"
    assert lines[2] == "| f1 | 0.5000 | 0.7500 | +0.2500 |"
    assert lines[3] == "| perplexity | 180.0000 | 150.5000 | -29.5000 |"
    assert lines[4] == "| tokenize | zh | — | — |"
    three = compare_table({"a": {"macro": {"f1": 0.1}}, "b": {"macro": {"f1": 0.2}}, "c": {"macro": {"f1": 0.4}}})
    assert three.splitlines()[0] == "| metric | a | b | c | Δ b | Δ c |"
    assert three.splitlines()[2] == "| macro.f1 | 0.1000 | 0.2000 | 0.4000 | +0.1000 | +0.3000 |"
    with pytest.raises(InputError, match="non-empty dict"):
        compare_table({})


def test_write_report_is_atomic_and_strict_json(tmp_path):
    np = pytest.importorskip("numpy")
    results = {"perplexity": math.inf, "tokens": np.int64(12), "loss": np.float32(0.5), "per": {1: {"f1": 1.0}}}
    json_path, md_path = write_report(tmp_path / "eval" / "gpt.json", results, title="GPT")
    assert (json_path.name, md_path.name) == ("gpt.json", "gpt.md")
    text = json_path.read_text(encoding="utf-8")
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}")) == {
        "perplexity": None, "tokens": 12, "loss": 0.5, "per": {"1": {"f1": 1.0}}
    }
    assert md_path.read_text(encoding="utf-8").startswith("## GPT\n")
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["gpt.json", "gpt.md"]  # no temp files left


def test_package_import_is_lazy_and_light():
    code = (
        "import sys; import lmforge.evaluate as e; "
        "from lmforge.evaluate import rouge, bleu, classification_report, ner_report, to_markdown, lm_scores; "
        "print(','.join(m for m in ('torch', 'sacrebleu', 'jieba', 'numpy', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    with pytest.raises(AttributeError):
        import lmforge.evaluate as evaluate

        _ = evaluate.no_such_metric
