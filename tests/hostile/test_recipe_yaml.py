"""Hostile recipe YAML (issue 19, item 21): alias bombs, deep nesting, huge files, huge values in errors.

Each attack runs in a child process under a hard address-space limit; the child times only the
`load_recipe` call and reports its own peak-RSS growth, so the figures exclude interpreter start-up.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from hostile_limits import run_cli, run_python

from lmforge.config import validate
from lmforge.errors import ConfigError
from lmforge.flow.recipe import Recipe

LOAD = textwrap.dedent("""
    import json, re, sys, time
    from lmforge.errors import UserError
    from lmforge.flow.recipe import load_recipe

    def high_water_kb():  # this process's own peak (ru_maxrss would include the parent's pages)
        return int(re.search(r"VmHWM:\\s*(\\d+)", open("/proc/self/status").read())[1])

    before = high_water_kb()
    t0 = time.perf_counter()
    try:
        load_recipe(sys.argv[1])
        error = None
    except UserError as exc:
        error = str(exc)
    seconds = time.perf_counter() - t0
    grew = (high_water_kb() - before) / 1024
    print(json.dumps({"seconds": seconds, "rss_growth_mb": grew, "error": error}))
""")


def _load_in_child(path: Path, timeout: float = 30.0) -> dict:
    m = run_python(LOAD.replace("sys.argv[1]", repr(str(path))), timeout=timeout, address_space_mb=1500)
    assert not m.timed_out, f"load_recipe ran past {timeout} s"
    assert m.returncode == 0, m.stderr[-2000:]
    return json.loads(m.stdout.strip().splitlines()[-1])


def _laughs(levels: int = 9, width: int = 9) -> str:
    """The billion laughs: each level is a list of `width` aliases to the level below (9**9 strings)."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


BOMBS = {
    # the unknown top-level keys' values were printed in the validation error
    "unknown_keys": "input: {builtin: {}}\n" + _laughs(),
    # a valid key whose value is the bomb: every nested list is the wrong type
    "in_a_field": "input: {builtin: {}}\ngenerate:\n  prompts: [" + ", ".join(
        ['&l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
        + [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]) + "]\n",
    # the same blow-up built out of mappings
    "mappings": "input: {builtin: {}}\n" + "m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9}\n" + "".join(
        f"m{i}: &m{i} {{" + ", ".join(f"k{j}: *m{i - 1}" for j in range(9)) + "}\n" for i in range(1, 9)),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_alias_bomb_is_refused_fast_and_small(tmp_path, name):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMBS[name], encoding="utf-8")
    got = _load_in_child(path)
    assert got["error"] is not None and "alias" in got["error"], got
    assert "\n" not in got["error"] and len(got["error"]) < 400, got["error"]
    assert got["seconds"] < 1.0, got
    assert got["rss_growth_mb"] < 100, got


def test_alias_bomb_through_the_cli_is_one_line_exit_2(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMBS["unknown_keys"], encoding="utf-8")
    m = run_cli("run", str(path), "--out", str(tmp_path / "run"), timeout=60, address_space_mb=3000)
    assert not m.timed_out and m.returncode == 2, (m.returncode, m.stderr[-2000:])
    lines = [line for line in m.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "alias" in lines[0] and len(lines[0]) < 400, m.stderr[-2000:]
    assert m.peak_rss_mb < 400, m.peak_rss_mb
    assert not (tmp_path / "run").exists()


def test_small_anchors_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(textwrap.dedent("""
        input: {builtin: {corpora: [python_docs], max_docs_per_corpus: 5}}
        pipeline:
          - normalize: &empty {}
          - strip_html: *empty
          - length_filter: {<<: {min_chars: 20}, max_chars: 500}
    """), encoding="utf-8")
    from lmforge.flow.recipe import load_recipe

    recipe = load_recipe(path)
    assert [name for name, _ in recipe.stage_specs()] == ["normalize", "strip_html", "length_filter"]
    assert recipe.stage_specs()[2][1]["min_chars"] == 20 and recipe.stage_specs()[2][1]["max_chars"] == 500


@pytest.mark.parametrize("opener,closer", [("[", "]"), ("{a: ", "}")])
def test_deep_nesting_is_a_one_line_error(tmp_path, opener, closer):
    path = tmp_path / "deep.yaml"
    path.write_text("input: " + opener * 10000 + "1" + closer * 10000 + "\n", encoding="utf-8")
    got = _load_in_child(path)
    assert got["error"] is not None and "nest" in got["error"] and "\n" not in got["error"], got
    assert got["seconds"] < 1.0 and got["rss_growth_mb"] < 100, got


def test_huge_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as fh:  # sparse: 3 GB of NULs on paper, nothing on disk
        fh.write(b"input: {builtin: {}}\n# ")
        fh.truncate(3 * 1024**3)
    got = _load_in_child(path)
    assert got["error"] is not None and "too large" in got["error"] and "\n" not in got["error"], got
    assert got["seconds"] < 1.0 and got["rss_growth_mb"] < 100, got


def _shared_bomb(levels: int = 9, width: int = 9) -> list:
    """The same blow-up built in Python: one list object shared `width` times per level."""
    node: list = ["lol"] * width
    for _ in range(levels - 1):
        node = [node] * width
    return node


PLACES = {
    "unknown_key": lambda bomb: {"input": {"builtin": {}}, "surprise": bomb},
    "wrong_type": lambda bomb: {"input": {"builtin": {}}, "generate": {"prompts": bomb}},
    "pipeline_entry": lambda bomb: {"input": {"builtin": {}}, "pipeline": [bomb]},
    "int_field": lambda bomb: {"input": {"builtin": {}}, "executor": {"workers": bomb}},
}


@pytest.mark.parametrize("place", sorted(PLACES))
def test_values_quoted_in_errors_are_capped(place):
    """Config errors quote the offending value; a huge one is cut, in bounded time, never expanded."""
    import time

    from lmforge.flow.recipe import parse_recipe

    data = PLACES[place](_shared_bomb())
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        parse_recipe(data)
    assert time.perf_counter() - t0 < 1.0
    message = str(info.value)
    assert "\n" not in message and len(message) < 1500, len(message)
    assert "[[[" in message  # the value is still quoted, just cut


def test_huge_integer_in_an_error_is_cut():
    with pytest.raises(ConfigError) as info:
        validate(Recipe, {"input": {"builtin": {}}, "surprise": 10**5000})
    assert len(str(info.value)) < 400


def test_every_user_error_message_is_capped():
    """Whatever built it, a user error quoting a huge value stays a readable line."""
    message = str(ConfigError("pipeline[0]: bad value " + "x" * 1_000_000))
    assert len(message) <= 2000 and message.startswith("pipeline[0]: bad value x") and "more characters" in message


def test_markup_in_an_error_is_printed_as_text(tmp_path):
    """An error quoting the user's text (`[/bold]` here) is text to the console, not rich markup to render."""
    path = tmp_path / "markup.yaml"
    path.write_text('input: {builtin: {}}\n"[/bold] [red]x": 1\n', encoding="utf-8")
    m = run_cli("run", str(path), "--out", str(tmp_path / "run"), timeout=60)
    lines = [line for line in m.stderr.splitlines() if line.strip()]
    assert m.returncode == 2 and len(lines) == 1, m.stderr[-2000:]
    assert "[/bold] [red]x" in lines[0]
