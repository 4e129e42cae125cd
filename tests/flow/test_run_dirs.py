"""Every command that writes a run directory follows the contract, and a re-run of a finished run
changes nothing: config.yaml, stats.json, logs/ and report.html exist, and no file is rewritten.

Each command runs in-process through the CLI (typer's runner) on tiny data, twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lmforge.cli.main import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")

POS = ["质量很好，非常满意", "物流很快，包装完好", "great value, works well", "很喜欢，下次还买", "清晰好用，推荐"]
NEG = ["质量太差，很失望", "发货太慢了", "broke after a day, bad", "不好用，退货了", "客服态度差，不推荐"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rundirs")
    rows = [{"text": f"{t} {i}", "label": label} for i in range(6) for label, texts in (("pos", POS), ("neg", NEG))
            for t in texts]
    (root / "labelled.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                         encoding="utf-8")
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": r["text"] * 3}, ensure_ascii=False) + "\n"
                                             for r in rows), encoding="utf-8")
    return root


def write_recipe(root: Path, name: str, body: dict) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **body}, allow_unicode=True), encoding="utf-8")
    return path


def snapshot(run_dir: Path) -> dict[str, int]:
    return {p.relative_to(run_dir).as_posix(): p.stat().st_mtime_ns for p in sorted(run_dir.rglob("*")) if p.is_file()}


def run_twice(args: list[str], run_dir: Path) -> dict:
    """Run the command, check the contract, run it again and check that no file changed."""
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    for name in ("config.yaml", "stats.json", "report.html"):
        assert (run_dir / name).is_file(), f"{name} missing after `lmforge {' '.join(args[:1])}`"
    assert any((run_dir / "logs").iterdir())
    stats = json.loads((run_dir / "stats.json").read_text(encoding="utf-8"))
    assert "report" in stats["steps"]
    before = snapshot(run_dir)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert snapshot(run_dir) == before  # nothing redone, nothing rewritten
    return stats


def tiny_data(root: Path) -> dict:
    return {"input": {"files": {"paths": [str(root / "docs.jsonl")]}, "shard_size": 20},
            "pipeline": [{"normalize": {}}, {"length_filter": {"min_chars": 5}}]}


def test_run(work):
    recipe = write_recipe(work, "run", tiny_data(work))
    stats = run_twice(["run", str(recipe), "--out", str(work / "run"), "--workers", "1"], work / "run")
    assert stats["totals"]["records_out"] == 60 and {"input", "pipeline"} <= set(stats["steps"])


def test_collect(work):
    stats = run_twice(["collect", "files", str(work / "docs.jsonl"), "--out", str(work / "collect")],
                      work / "collect")
    assert stats["steps"]["input"]["records"] == 60


@pytest.fixture(scope="module")
def pretrained(work) -> Path:
    recipe = write_recipe(work, "pretrain", {
        **tiny_data(work), "tokenizer": {"kind": "byte_bpe", "vocab_size": 300},
        "pretrain": {"model": {"preset": "tiny"}, "seq_len": 32, "batch_size": 4, "steps": 3, "eval_every": 3,
                     "eval_batches": 1, "warmup_steps": 1, "val_percent": 20, "device": "cpu"}})
    stats = run_twice(["pretrain", str(recipe), "--out", str(work / "pretrain")], work / "pretrain")
    assert stats["steps"]["pretrain"]["steps"] == 3 and stats["steps"]["tokens"]["train_tokens"] > 0
    return work / "pretrain"


def test_pretrain(pretrained):
    assert (pretrained / "pretrain" / "checkpoint" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def finetuned(work, pretrained) -> Path:
    recipe = write_recipe(work, "finetune", {"finetune": {
        "task": "classification", "data": {"path": str(work / "labelled.jsonl")},
        "model": {"from": str(pretrained / "pretrain" / "checkpoint")}, "epochs": 1, "batch_size": 8,
        "seq_len": 32, "device": "cpu", "tensorboard": False}})
    stats = run_twice(["finetune", str(recipe), "--out", str(work / "finetune")], work / "finetune")
    assert 0.0 <= stats["steps"]["finetune"]["test"]["accuracy"] <= 1.0
    return work / "finetune"


def test_finetune(finetuned):
    assert (finetuned / "best").is_dir()


def test_evaluate(work, finetuned):
    out = work / "evaluate"
    stats = run_twice(["evaluate", str(finetuned / "best"), str(work / "labelled.jsonl"), "--out", str(out)], out)
    assert 0.0 <= stats["steps"]["evaluate"]["results"]["accuracy"] <= 1.0


def test_augment(work):
    recipe = write_recipe(work, "augment", {"augment": {"data": {"path": str(work / "labelled.jsonl")},
                                                        "operations": [{"eda": {"num_aug": 1}}]}})
    stats = run_twice(["augment", str(recipe), "--out", str(work / "augment")], work / "augment")
    assert stats["steps"]["augment"]["augmented"] > 0 and (work / "augment" / "augmented.jsonl").is_file()


def test_label_split(work):
    out = work / "label"
    stats = run_twice(["label", "split", str(work / "labelled.jsonl"), "--out", str(out)], out)
    sizes = stats["steps"]["label"]["dataset"]["sizes"]
    assert sum(sizes.values()) == 60 and (out / "train.jsonl").is_file() and (out / "task.json").is_file()


def test_a_recipe_with_every_labelled_data_section(work):
    """label, augment and evaluate in one recipe: each a step of the same run directory."""
    recipe = write_recipe(work, "labelled", {
        "label": {"source": str(work / "labelled.jsonl"), "seed": 1},
        "augment": {"data": {"path": str(work / "labelled.jsonl")}, "operations": [{"eda": {"num_aug": 1}}]}})
    stats = run_twice(["run", str(recipe), "--out", str(work / "labelled")], work / "labelled")
    assert list(stats["steps"]) == ["augment", "label", "report"]


def test_api_overrides_leave_the_callers_recipe_alone(work, pretrained, tmp_path):
    """`lmforge.api.pretrain(recipe, steps=...)` is the command's `--steps`: it changes the run, not the object."""
    from lmforge import api
    from lmforge.flow.recipe import load_recipe

    recipe = load_recipe(work / "pretrain.yaml")
    result = api.pretrain(recipe, tmp_path / "run", steps=2)
    assert result.steps["pretrain"]["steps"] == 2 and recipe.pretrain.steps == 3
