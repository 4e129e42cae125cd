"""Custom stages are code (issue 19, item 22): clear errors, nothing run for an obvious mistake, and
`--no-custom-stages` refusing every custom stage before any import."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from hostile_limits import run_cli

from lmforge.errors import ConfigError
from lmforge.flow.recipe import load_recipe

STAGE_MODULE = '''
import pathlib, os
pathlib.Path(os.environ["SIDE_EFFECT"]).write_text("imported")
from lmforge.pipeline import Mapper


class Upper(Mapper):
    name = "upper"

    def apply(self, record):
        record.text = record.text.upper()
        return record


NOT_A_STAGE = dict
GREETING = "hello"


def helper():
    return 1
'''


def _recipe(tmp_path: Path, *stages: str) -> Path:
    path = tmp_path / "recipe.yaml"
    entries = "\n".join(f'  - "{s}": {{}}' for s in stages)
    path.write_text(f"input: {{builtin: {{corpora: [python_docs], max_docs_per_corpus: 3}}}}\npipeline:\n{entries}\n",
                    encoding="utf-8")
    return path


@pytest.fixture
def side_effect_module(tmp_path, monkeypatch):
    """A package whose import leaves a file behind, so a test can tell whether its code ran."""
    pkg = tmp_path / "code" / "sidepkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(STAGE_MODULE.replace("NOT_A_STAGE", "PKG_VALUE"), encoding="utf-8")
    (pkg / "stages.py").write_text(STAGE_MODULE, encoding="utf-8")
    marker = tmp_path / "imported.txt"
    monkeypatch.setenv("SIDE_EFFECT", str(marker))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    yield marker
    for name in [m for m in sys.modules if m == "sidepkg" or m.startswith("sidepkg.")]:
        del sys.modules[name]  # each test imports (or not) a fresh copy


def test_this_s_is_refused_without_running_the_module(tmp_path, capsys):
    with pytest.raises(ConfigError) as info:
        load_recipe(_recipe(tmp_path, "this:s"))
    assert "this:s" in str(info.value) and "not a subclass" in str(info.value)
    out = capsys.readouterr()
    assert "Beautiful is better" not in out.out + out.err


@pytest.mark.parametrize("stage,expected", [
    ("no_such_module_xyz:Stage", "no module named 'no_such_module_xyz'"),
    ("json:JSONDecoder", "class JSONDecoder, not a subclass of lmforge.pipeline.Stage"),
    ("json:dumps", "is a function, not a subclass"),
    ("json.nosub:Thing", "cannot import module 'json.nosub'"),
    ("not a:module", "must be written 'package.module:ClassName'"),
    ("lmforge.pipeline.stage:KEEP", "not a subclass of lmforge.pipeline.Stage"),
])
def test_a_name_that_is_not_a_stage_gets_a_clear_error(tmp_path, stage, expected):
    with pytest.raises(ConfigError) as info:
        load_recipe(_recipe(tmp_path, stage))
    message = str(info.value)
    assert expected in message and stage in message and "pipeline[0]" in message, message


@pytest.mark.parametrize("stage,expected", [
    ("sidepkg.stages:Nope", "defines no 'Nope'"),
    ("sidepkg.stages:GREETING", "'GREETING' in module 'sidepkg.stages' is a plain value, not a subclass"),
    ("sidepkg.stages:helper", "'helper' in module 'sidepkg.stages' is a function, not a subclass"),
    ("sidepkg.nosuch:Upper", "cannot import module 'sidepkg.nosuch'"),
])
def test_what_the_source_shows_is_refused_before_the_import(tmp_path, side_effect_module, stage, expected):
    """A name the module plainly lacks, or binds to a value or function, is refused without running it."""
    with pytest.raises(ConfigError) as info:
        load_recipe(_recipe(tmp_path, stage))
    assert expected in str(info.value) and stage in str(info.value), str(info.value)
    if "nosuch" not in stage:  # a missing submodule is left to the import, which runs the package
        assert not side_effect_module.exists(), "the module was imported"


def test_a_custom_stage_loads_and_runs_its_code_by_default(tmp_path, side_effect_module):
    recipe = load_recipe(_recipe(tmp_path, "normalize", "sidepkg.stages:Upper"))
    assert [name for name, _ in recipe.stage_specs()] == ["normalize", "sidepkg.stages:Upper"]
    assert side_effect_module.read_text() == "imported"


@pytest.mark.parametrize("stage", ["sidepkg.stages:Upper", "sidepkg:PKG_VALUE", "sidepkg.stages:NOT_A_STAGE"])
def test_no_custom_stages_refuses_before_any_import(tmp_path, side_effect_module, stage):
    with pytest.raises(ConfigError) as info:
        load_recipe(_recipe(tmp_path, "normalize", stage), allow_custom_stages=False)
    message = str(info.value)
    assert f"custom stage {stage!r} refused" in message and "pipeline[1]" in message, message
    assert not side_effect_module.exists(), "the stage's module was imported"


def test_cli_no_custom_stages_is_one_line_exit_2(tmp_path, side_effect_module):
    recipe = _recipe(tmp_path, "sidepkg.stages:Upper")
    env = {"PYTHONPATH": str(tmp_path / "code"), "SIDE_EFFECT": str(side_effect_module)}
    m = run_cli("run", str(recipe), "--out", str(tmp_path / "run"), "--no-custom-stages", env=env,
                timeout=60, address_space_mb=None)
    assert m.returncode == 2, m.stderr[-2000:]
    lines = [line for line in m.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "'sidepkg.stages:Upper'" in lines[0] and "--no-custom-stages" in lines[0], m.stderr
    assert not side_effect_module.exists()
    assert not (tmp_path / "run").exists()


def test_cli_runs_a_custom_stage_without_the_flag(tmp_path, side_effect_module):
    recipe = _recipe(tmp_path, "sidepkg.stages:Upper")
    env = {"PYTHONPATH": str(tmp_path / "code"), "SIDE_EFFECT": str(side_effect_module)}
    m = run_cli("run", str(recipe), "--out", str(tmp_path / "run"), env=env, timeout=120, address_space_mb=None)
    assert m.returncode == 0, m.stderr[-2000:]
    assert side_effect_module.exists()


def test_source_check_leaves_undecidable_modules_to_the_import(tmp_path, monkeypatch):
    """A module that builds its names at run time is imported, then checked."""
    (tmp_path / "dyn_stage_mod.py").write_text(textwrap.dedent("""
        from lmforge.pipeline import Mapper
        globals()["Made"] = type("Made", (Mapper,), {"name": "made", "apply": lambda self, r: r})
    """), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = load_recipe(_recipe(tmp_path, "dyn_stage_mod:Made"))
    assert recipe.stage_specs()[0][0] == "dyn_stage_mod:Made"
