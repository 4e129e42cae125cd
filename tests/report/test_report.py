"""`lmforge report` on real run directories: the whole flow, data-only runs, fine-tunes, damaged runs, offline in a browser."""

from __future__ import annotations

import html
import json
import logging
import re
import sys
from pathlib import Path

import pytest

from lmforge.errors import UserError
from lmforge.report import write_report, write_report_safely

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FULL_TITLES = [
    "Data funnel: records kept after each stage",
    "Dropped records by reason",
    "Document length, final output (minhash_dedup)",
    "Documents by language",
    "Duplicate clusters by size",
    "Tokenizer fertility by language",
    "Pretraining: training and validation loss, learning rate",
    "Pretraining: throughput and gradient norm",
]


def svg_titles(page: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(r"<svg[^>]*>\s*<title>([^<]*)</title>", page)]


def section_ids(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', page)


def section(page: str, sid: str) -> str:
    start = page.index(f'<section id="{sid}">')
    return page[start: page.index("</section>", start)]


def cells(fragment: str) -> list[list[str]]:
    """Table rows of an HTML fragment as lists of unescaped cell texts."""
    rows = [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", fragment, re.S)]
    return [row for row in rows if row]  # header rows have no <td>


def number(text: str) -> float:
    return float(text.replace(",", ""))


# --------------------------------------------------------------------------- the whole flow


def test_a_recipe_run_ends_with_a_report_of_every_step(full_run):
    run = full_run.run_dir
    assert full_run.report == run / "report.html"
    page = (run / "report.html").read_text(encoding="utf-8")
    assert section_ids(page) == ["funnel", "documents", "dedup", "tokenizer", "train-pretrain", "samples", "configs"]
    assert svg_titles(page) == FULL_TITLES
    assert page.count("<svg") == len(FULL_TITLES)
    assert "could not be built" not in page

    stats = json.loads((run / "stats.json").read_text())
    funnel = {row[0]: row for row in cells(section(page, "funnel")) if len(row) == 8}
    for st in stats["stages"]:  # every stage's counts and drop reasons, as stats.json has them
        assert number(funnel[st["name"]][1]) == st["in"] and number(funnel[st["name"]][2]) == st["out"]
        for reason, n in st["dropped"].items():
            assert f"{reason} {n:,}" in funnel[st["name"]][4]
    # a dropped record of each reason is shown with its stage
    examples = cells(section(page, "funnel").split("Examples of dropped records")[1])
    assert {row[0] for row in examples} == set(stats["totals"]["dropped"])

    # duplicates: every exact duplicate dropped belongs to one cluster counted in the table
    dedup = {row[0]: row for row in cells(section(page, "dedup")) if len(row) == 5}
    assert number(dedup["exact_dedup"][2]) == stats["totals"]["dropped"]["exact_duplicate"]

    # documents: the per-language table adds up to the records written
    docs = cells(section(page, "documents"))
    assert sum(number(row[1]) for row in docs if len(row) == 7) == stats["totals"]["records_out"]
    assert {row[0] for row in docs if len(row) == 7} >= {"zh", "en"}

    # tokenizer: Chinese costs more tokens per character than English for a 400-token byte-level BPE
    fert = {row[0]: row for row in cells(section(page, "tokenizer")) if len(row) == 9}
    assert number(fert["zh"][4]) > number(fert["en"][4]) > 0
    assert fert["zh"][8] == fert["en"][8] == "held-out"

    # training: the step count and perplexity the run reported
    pre = stats["steps"]["pretrain"]
    train = dict(row for row in cells(section(page, "train-pretrain")) if len(row) == 2)
    assert train["steps"] == str(pre["steps"]) == "8"
    assert train["validation perplexity before → after"] == f"{pre['val_ppl_before']:,.2f} → {pre['val_ppl_after']:,.2f}"
    assert train["MFU (mean)"] == "not measured"


def test_samples_and_configs_are_escaped_text(full_run):
    page = (full_run.run_dir / "report.html").read_text(encoding="utf-8")
    samples = cells(section(page, "samples"))
    written = [json.loads(x) for x in (full_run.run_dir / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row[:2] for row in samples] == [[s["prompt"], s["completion"]] for s in written]
    assert "<b>The</b>" not in page and "&lt;b&gt;The&lt;/b&gt; &amp;" in page
    configs = dict(row for row in cells(section(page, "configs")) if len(row) == 2)
    assert configs["vocab_size"] == "400" and configs["n_layer"] == "2"  # tokenizer and model config tables
    assert configs["[4].minhash_dedup.threshold"] == "0.8"
    # nothing is fetched: no external resource, no script
    assert not re.search(r"""(?:src|href)=["'](?!#)""", page) and "<script" not in page and "@import" not in page


# --------------------------------------------------------------------------- partial runs


def test_data_only_run_gets_data_sections_and_sampling_is_stated(make_recipe, tmp_path, monkeypatch):
    from lmforge.flow import run_recipe
    from lmforge.flow.recipe import load_recipe
    from lmforge.report import data

    recipe = make_recipe(shard_size=20, stages=["strip_html: {}", "normalize: {}", "length_filter: {min_chars: 10}",
                                                "minhash_dedup: {threshold: 0.7}"])
    result = run_recipe(load_recipe(recipe), tmp_path / "run", base_dir=tmp_path)
    page = result.report.read_text(encoding="utf-8")
    assert section_ids(page) == ["funnel", "documents", "dedup", "configs"]
    assert "Tokenizer" not in svg_titles(page) and not any("Pretraining" in t for t in svg_titles(page))
    near = result.stats["totals"]["dropped"]["near_duplicate"]
    dedup = {row[0]: row for row in cells(section(page, "dedup")) if len(row) == 5}
    assert number(dedup["minhash_dedup"][2]) == near > 0  # cluster sizes recorded by MinHash add up

    # a small row budget is shared by the stages: the dedup stage's clusters are still seen
    q = data.scan_quarantine(tmp_path / "run", max_rows=4)
    assert q.clusters["minhash_dedup"] and q.files_read < q.files_total

    monkeypatch.setattr(data, "MAX_SHARDS", 4)
    shards = len(list((tmp_path / "run" / "stages" / "00-input").glob("shard-*.parquet")))
    page = write_report(tmp_path / "run", tmp_path / "sampled.html").read_text(encoding="utf-8")
    assert f"input: read 4 of {shards} shards" in page
    picked, total = data.pick_shards(tmp_path / "run" / "stages" / "00-input")
    assert total == shards and [p.name for p in (picked[0], picked[-1])] == [
        "shard-00000.parquet", f"shard-{shards - 1:05d}.parquet"]


def test_collect_only_run(tmp_path, corpus_dir):
    from lmforge.flow import collect

    result = collect("files", {"paths": [str(corpus_dir / "*.jsonl*")]}, tmp_path / "run", shard_size=100)
    page = result.report.read_text(encoding="utf-8")
    assert section_ids(page) == ["funnel", "documents", "configs"]
    assert svg_titles(page) == ["Data funnel: records kept after each stage", "Document length, final output (input)",
                                "Documents by language"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """Two small fine-tunes side by side: sentiment classification (BERT) and NER (GPT backbone)."""
    from lmforge.finetune.config import FinetuneConfig
    from lmforge.finetune.run import finetune
    from lmforge.tasks.builtin import load_task
    from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer

    root = tmp_path_factory.mktemp("ft")
    cls = load_task("zh_sentiment", max_per_class=60)
    ner = load_task("zh_ner", max_sentences=60)
    tok = train_tokenizer([e.text for e in cls.train] + ["".join(e.tokens) for e in ner.train],
                          TokenizerConfig(kind="byte_bpe", vocab_size=400), root / "tok")

    def cfg(task: str, arch: str, preset: str) -> FinetuneConfig:
        return FinetuneConfig.model_validate({
            "task": task, "data": {"builtin": "zh_sentiment" if task == "classification" else "zh_ner"},
            "model": {"tokenizer": str(tok), "arch": arch, "preset": preset}, "epochs": 1, "batch_size": 16,
            "lr": 2e-3, "seq_len": 32, "tensorboard": False, "device": "cpu", "eval_every": 2})

    finetune(cfg("classification", "bert", "bert-tiny"), root / "runs" / "sentiment", data=cls)
    finetune(cfg("ner", "gpt", "tiny"), root / "runs" / "ner", data=ner)
    return root / "runs"


def test_finetune_runs_get_confusion_matrices_matching_their_test_scores(finetuned):
    page = write_report(finetuned).read_text(encoding="utf-8")
    assert section_ids(page) == ["ft-ner", "ft-sentiment", "configs"]
    titles = svg_titles(page)
    for name in ("ner", "sentiment"):
        assert f"{name}: confusion matrix (test" in " ".join(titles)
        assert any(t.startswith(f"{name}: F1 per") for t in titles)
        assert f"{name}: training and validation loss, learning rate" in titles
    sentiment = json.loads((finetuned / "sentiment" / "report.json").read_text())
    per_class = {row[0]: row for row in cells(section(page, "ft-sentiment")) if len(row) == 5}
    assert set(per_class) >= {"neg", "pos"}
    assert sum(number(per_class[k][4]) for k in ("neg", "pos")) == sentiment["sizes"]["test"]
    # the accuracy drawn from saved predictions is the one fine-tuning scored itself
    assert f"accuracy {sentiment['test']['accuracy']:.4f}" in section(page, "ft-sentiment")
    ner = json.loads((finetuned / "ner" / "report.json").read_text())
    assert f"f1 {ner['test']['f1']:.4f}" in section(page, "ft-ner")
    assert f"token_accuracy {ner['test']['token_accuracy']:.4f}" in section(page, "ft-ner")


# --------------------------------------------------------------------------- failures


def test_a_damaged_shard_costs_only_its_section(full_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(full_run.run_dir, run)
    next((run / "stages").rglob("quarantine-*.parquet")).write_bytes(b"not parquet at all")
    page = write_report(run).read_text(encoding="utf-8")
    assert "funnel-error" in section_ids(page) and "could not be built" in section(page, "funnel-error")
    assert {"documents", "tokenizer", "train-pretrain", "samples"} <= set(section_ids(page))


def test_not_a_run_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        write_report(tmp_path / "nope")
    with pytest.raises(UserError, match="holds nothing to report"):
        write_report(tmp_path)
    assert write_report_safely(tmp_path) is None


def test_a_report_failure_never_fails_the_run(make_recipe, tmp_path, monkeypatch, caplog):
    from lmforge.flow import run_recipe
    from lmforge.flow.recipe import load_recipe

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the `report` extra were not installed
    with caplog.at_level(logging.WARNING, logger="lmforge.report"):
        result = run_recipe(load_recipe(make_recipe()), tmp_path / "run", base_dir=tmp_path)
    assert result.report is None and result.stats["totals"]["records_out"] > 0
    assert not (tmp_path / "run" / "report.html").exists()
    assert "pip install 'lmforge[report]'" in (tmp_path / "run" / "logs" / "run.log").read_text()


def test_cli_writes_where_asked(full_run, tmp_path, capsys):
    from lmforge.cli.main import main

    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(full_run.run_dir), "--out", str(out)]) == 0
    assert f"report: {out}" in capsys.readouterr().out.replace("\n", "")
    assert svg_titles(out.read_text(encoding="utf-8")) == FULL_TITLES
    assert main(["report", str(tmp_path / "missing")]) == 2


# --------------------------------------------------------------------------- in a browser, offline


def test_report_renders_offline_in_chromium(full_run, browser, tmp_path):
    path: Path = full_run.report
    requested: list[str] = []
    context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()

    def only_the_file(route):
        requested.append(route.request.url)
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            route.abort()

    page.route("**/*", only_the_file)
    page.goto(path.as_uri(), wait_until="load")
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    charts = page.evaluate("""() => [...document.querySelectorAll('svg')].map(s => {
        const r = s.getBoundingClientRect();
        return {title: s.querySelector(':scope > title')?.textContent, width: r.width, height: r.height,
                drawn: s.querySelectorAll('path, use, text').length};
    })""")
    assert [c["title"] for c in charts] == FULL_TITLES
    assert all(c["width"] > 300 and c["height"] > 150 and c["drawn"] > 20 for c in charts), charts
    assert page.locator("img").count() == 0  # every chart is inline SVG
    assert page.title() == "lmforge run report: report-full"
    assert page.locator("section h2").all_inner_texts() == [
        "Data funnel", "Documents", "Duplicates", "Tokenizer", "Pretraining", "Generated samples", "Configs"]
    assert "<b>The</b> &" in page.locator("#samples").inner_text()  # shown as text, not markup
    assert requested == [path.as_uri()]  # nothing but the file itself was requested
    assert shot.stat().st_size > 50_000
    context.close()
