"""Sources are registry entries like stages: one class plus one entry, and the recipe's input section follows."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lmforge.pipeline
from lmforge.errors import ConfigError
from lmforge.flow.recipe import parse_recipe
from lmforge.pipeline.executors import LocalExecutor
from lmforge.pipeline.input import InputConfig, iter_input
from lmforge.pipeline.registry import REGISTRY, SOURCE, Entry, resolve_source, resolve_stage, source_names
from lmforge.pipeline.runner import collect_stats, iter_output, run_pipeline


@pytest.fixture
def count_source(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # countsource.py lives beside this file
    monkeypatch.setitem(REGISTRY, "count", Entry(SOURCE, "countsource:CountSource"))


def test_a_source_registered_by_one_entry_runs_in_a_recipe(count_source, tmp_path):
    recipe = parse_recipe({"input": {"count": {"n": 5, "word": "tally"}, "shard_size": 2},
                           "pipeline": [{"length_filter": {"min_chars": 5}}]})
    assert recipe.input.count.n == 5 and recipe.resolved()["input"] == {
        "count": {"n": 5, "word": "tally"}, "shard_size": 2}
    out = run_pipeline(tmp_path / "run", recipe.input, recipe.stage_specs(), LocalExecutor(1), tmp_path)
    assert [r.text for r in iter_output(out)] == [f"tally number {i} of a small corpus" for i in range(5)]
    stats = collect_stats(tmp_path / "run")
    assert [(s["name"], s["shards"], s["in"], s["out"]) for s in stats["stages"]] == [
        ("input", 3, 5, 5), ("length_filter", 3, 5, 5)]


def test_source_config_errors_name_the_field(count_source):
    with pytest.raises(ConfigError, match=r"input\.count\.n: Input should be greater than 0 \(got 0\)"):
        parse_recipe({"input": {"count": {"n": 0}}})
    with pytest.raises(ConfigError, match=r"input\.files\.paths: Field required"):
        parse_recipe({"input": {"files": {"recursive": True}}})
    with pytest.raises(ConfigError, match=r"input\.normalize: unknown key"):
        parse_recipe({"input": {"normalize": {}}})
    with pytest.raises(ConfigError, match="give at least one source of builtin, files, .*, dataset, count"):
        parse_recipe({"input": {"shard_size": 10}})
    with pytest.raises(ConfigError, match=r"pipeline\[0\]: 'count' is a source, not a stage"):
        parse_recipe({"input": {"count": {"n": 1}}, "pipeline": ["count"]})


def test_sources_are_read_in_registry_order_whatever_the_recipe_order(count_source, tmp_path):
    (tmp_path / "a.txt").write_text("a local file", encoding="utf-8")
    config = InputConfig.model_validate({"count": {"n": 2}, "files": ["a.txt"], "builtin": {
        "corpora": ["reviews"], "max_docs_per_corpus": 2}})
    assert config.source_names == ["builtin", "files", "count"]
    assert config.count.n == 2 and config.crawl is None  # an unused source reads as None
    assert list(config.model_dump(exclude_none=True)) == ["builtin", "files", "count", "shard_size"]
    sources = [r.source for r in iter_input(config, tmp_path, tmp_path / "work")]
    assert sources == ["builtin:reviews"] * 2 + ["file:text"] + ["count"] * 2


def test_every_builtin_source_resolves_to_a_source_class():
    assert source_names() == ("builtin", "files", "warc", "crawl", "sql", "api", "dataset")
    for name in source_names():
        source = resolve_source(name)
        assert issubclass(source, lmforge.pipeline.Source) and source.name == name
    with pytest.raises(ConfigError, match="source 'normalize' is a stage"):
        resolve_source("normalize")
    with pytest.raises(ConfigError, match="'builtin' is a source, not a stage"):
        resolve_stage("builtin")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):  # function-level imports count too
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_pipeline_package_imports_nothing_from_collect():
    package = Path(lmforge.pipeline.__file__).parent
    offenders = {f"{path.name}: {name}" for path in package.rglob("*.py") for name in _imported_modules(path)
                 if name == "lmforge.collect" or name.startswith("lmforge.collect.")}
    assert offenders == set()
