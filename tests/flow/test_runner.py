"""The one runner's contract, on toy steps: markers, resume, config guard, uncached steps, torchrun ranks."""

from __future__ import annotations

import json
import threading
import time

import pytest

from lmforge.config import StrictModel
from lmforge.errors import ConfigError
from lmforge.flow.runner import marker_path, run_steps
from lmforge.pipeline.step import Step, StepContext


class Empty(StrictModel):
    pass


def toy(name: str, *, reads=(), writes=(), every_rank=False, cached=True, calls: list[str]):
    """A step that writes its declared files and records that it ran."""

    class Toy(Step):
        Config = Empty

        def reads(self):
            return list(reads)

        def writes(self):
            return list(writes)

        def run(self, ctx: StepContext):
            calls.append(name)
            for path in writes:
                ctx.path(path).write_text(name)
            return {"made_by": name, "rank": ctx.rank, "before": sorted(ctx.summaries)}

    Toy.name, Toy.every_rank, Toy.cached = name, every_rank, cached
    return Toy(Empty())


def test_steps_run_once_and_a_rerun_skips_them(tmp_path):
    calls: list[str] = []
    steps = [toy("a", writes=["a.txt"], calls=calls), toy("b", reads=["a.txt"], writes=["b.txt"], calls=calls),
             toy("report", writes=["r.txt"], cached=False, calls=calls)]
    first = run_steps(steps, tmp_path, {"name": "toy"})
    assert calls == ["a", "b", "report"] and first.ran == ["a", "b", "report"]
    assert first.steps["b"]["before"] == ["a"]  # a step sees the summaries of the steps before it
    assert json.loads(marker_path(tmp_path, "b").read_text())["made_by"] == "b"
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert list(stats["steps"]) == ["a", "b", "report"]

    again = run_steps(steps, tmp_path, {"name": "toy"})
    assert calls == ["a", "b", "report"] and again.ran == [] and again.steps == first.steps

    marker_path(tmp_path, "b").unlink()  # b died: b runs again, and the uncached report after it
    run_steps(steps, tmp_path, {"name": "toy"})
    assert calls == ["a", "b", "report", "b", "report"]


def test_a_step_reading_what_no_earlier_step_writes_is_refused_before_anything_runs(tmp_path):
    calls: list[str] = []
    steps = [toy("a", writes=["a.txt"], calls=calls), toy("pretrain", reads=["tokens"], calls=calls)]
    with pytest.raises(ConfigError, match="pretrain: needs 'tokens', which no earlier step of this run writes"):
        run_steps(steps, tmp_path, {"name": "toy"})
    assert calls == [] and not (tmp_path / "config.yaml").exists()


def test_another_config_in_the_same_run_directory_is_refused(tmp_path):
    calls: list[str] = []
    run_steps([toy("a", calls=calls)], tmp_path, {"name": "toy", "a": {"x": 1}})
    run_steps([toy("a", calls=calls)], tmp_path, {"name": "renamed", "a": {"x": 1}})  # the name may change
    with pytest.raises(ConfigError, match=r"differs in: a\)"):
        run_steps([toy("a", calls=calls)], tmp_path, {"name": "toy", "a": {"x": 2}})
    assert calls == ["a"]


def test_other_torchrun_ranks_wait_for_rank_0s_markers_and_join_only_every_rank_steps(tmp_path, monkeypatch):
    calls: list[str] = []
    steps = [toy("data", writes=["data.txt"], calls=calls), toy("train", reads=["data.txt"], every_rank=True,
                                                                 calls=calls)]
    monkeypatch.setenv("RANK", "1")

    def rank_0_finishes_data():
        time.sleep(0.5)
        marker_path(tmp_path, "data").parent.mkdir(parents=True, exist_ok=True)
        marker_path(tmp_path, "data").write_text(json.dumps({"made_by": "rank 0"}))

    writer = threading.Thread(target=rank_0_finishes_data)
    writer.start()
    t0 = time.monotonic()
    result = run_steps(steps, tmp_path, {"name": "toy"})
    writer.join()
    assert time.monotonic() - t0 >= 0.4  # it waited for the marker
    assert calls == ["train"]  # the data step ran on rank 0 only
    assert result.steps["data"] == {"made_by": "rank 0"} and result.steps["train"]["rank"] == 1
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "stats.json").exists()  # rank 0 writes them
