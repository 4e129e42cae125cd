"""What a fresh install must give (issue 19, items 1-4): found by running the README's commands on a new machine."""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
from pathlib import Path

from lmforge.clean import extract as extract_mod
from lmforge.clean.extract import Extract
from lmforge.pipeline.stage import run_chain
from lmforge.records import Record

ROOT = Path(__file__).resolve().parents[2]
# A page whose text sits in markup lexbor's scorer ignores (a <td> list), so our extractor keeps
# little and the trafilatura fallback has to step in.
THIN_PAGE = """<html><head><title>t</title></head><body><table><tr><td>
{}</td></tr></table></body></html>""".format("<br>".join(
    f"Paragraph {i}: the committee reviewed the annual budget and approved new funding for schools."
    for i in range(12)))


def test_trafilatura_imports_in_the_clean_extra():
    """lxml >= 6 needs lxml_html_clean beside trafilatura; without it `import trafilatura` fails."""
    import lxml_html_clean  # noqa: F401 - the dependency that was missing
    import trafilatura

    text = trafilatura.extract(THIN_PAGE)
    assert text and "committee" in text


def test_missing_fallback_warns_once_and_is_counted(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "trafilatura", None)  # import trafilatura -> ImportError
    monkeypatch.setattr(extract_mod, "_TRAFILATURA", [])
    pages = [Record(id=f"p{i}", text=THIN_PAGE, source="t", provenance={"content_type": "text/html"})
             for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="lmforge.clean.extract"):
        out, stats = run_chain([Extract(fallback_below_chars=10_000)], pages)
        kept = list(out)
    warnings = [r for r in caplog.records if "trafilatura fallback is unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert stats[0].counters["fallback_unavailable"] == 3
    assert all(r.meta["extract"]["method"] == "fallback_unavailable" for r in kept)


def test_fallback_runs_when_installed(monkeypatch):
    monkeypatch.setattr(extract_mod, "_TRAFILATURA", [])
    out, stats = run_chain([Extract(fallback_below_chars=10_000)],
                           [Record(id="p", text=THIN_PAGE, source="t", provenance={"content_type": "text/html"})])
    (record,) = list(out)
    assert record.meta["extract"]["method"] == "trafilatura"
    assert "fallback_unavailable" not in stats[0].counters


def test_no_benchmark_shadows_the_standard_library():
    names = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    assert names, "no benchmarks found"
    assert not names & set(sys.stdlib_module_names)


def test_every_benchmark_starts_from_the_repo_root():
    """`python benchmarks/NAME.py --help` from the repo root: the script's folder is sys.path[0], where a
    file named like a standard-library module (the old benchmarks/tokenize.py) broke every other script.
    The scripts start side by side, a process each, as a user would run them."""
    scripts = sorted(p.name for p in (ROOT / "benchmarks").glob("[!_]*.py"))  # _NAME.py: shared code, not a benchmark
    procs = {s: subprocess.Popen([sys.executable, f"benchmarks/{s}", "--help"], cwd=ROOT, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for s in scripts}
    for script, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, (script, err[-2000:])
        assert "usage:" in out, script


def test_benchmarks_print_their_figures_as_the_last_line():
    """Each benchmark's docstring names its last line of `key value` pairs (the contract the issues rely on)."""
    for path in (ROOT / "benchmarks").glob("[!_]*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        assert "Last line" in doc or "last line" in doc, path.name


def test_python_dash_m_lmforge():
    done = subprocess.run([sys.executable, "-m", "lmforge", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("lmforge ")


def test_install_script_offers_the_bench_extra():
    dry = subprocess.run(["bash", "scripts/install.sh", "--bench", "--dry-run"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "-e .[all,dev,bench]" in dry.stdout
    plain = subprocess.run(["bash", "scripts/install.sh", "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert "-e .[all,dev]" in plain.stdout and "bench" not in plain.stdout
    bad = subprocess.run(["bash", "scripts/install.sh", "--gpu"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "unknown option" in bad.stderr


def test_readme_says_how_to_install_the_benchmarks():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first = readme.index("benchmarks/")
    assert "scripts/install.sh --bench" in readme[: first + 2000]
