"""The shipped pretraining recipes, each exercised: `lmforge pretrain` end to end on CPU (GPT, BERT),
and the GPU recipe validated down to its model shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lmforge.flow.recipe import load_recipe, parse_recipe

RECIPES = Path(__file__).parents[2] / "recipes"


def shrunk(name: str, tmp_path: Path, docs: int, **pretrain) -> Path:
    """The shipped recipe with fewer documents and steps, so a test runs it in seconds."""
    data = yaml.safe_load((RECIPES / name).read_text(encoding="utf-8"))
    data["input"]["builtin"]["max_docs_per_corpus"] = docs
    data["pretrain"].update(pretrain)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.slow  # 60-80 s on two cores; the demo test trains, resumes and reports a GPT in the default run
def test_gpt_tiny_cpu_recipe_trains_resumes_and_exports(tmp_path, lmforge_cli):
    recipe = shrunk("gpt-tiny-cpu.yaml", tmp_path, docs=300, steps=30, save_every=10, eval_every=10, log_every=5)
    out, hf = tmp_path / "run", tmp_path / "hf"
    done = lmforge_cli("pretrain", str(recipe), "--out", str(out), "--export-hf", str(hf))
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((out / "steps" / "pretrain.done").read_text())
    assert info["arch"] == "gpt" and info["steps"] == 30
    assert info["last_loss"] < info["first_loss"] - 1.0 and info["val_ppl_after"] < info["val_ppl_before"] / 2
    manifest = json.loads((out / "tokens" / "train" / "manifest.json").read_text())
    val = json.loads((out / "tokens" / "val" / "manifest.json").read_text())
    assert manifest["documents"] > 10 * val["documents"] > 0  # 5% of documents held out
    assert sorted(p.name for p in (out / "pretrain" / "checkpoints").iterdir()) == [
        "latest.json", "step-0000010", "step-0000020"]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf)
    tok = AutoTokenizer.from_pretrained(hf)
    ids = tok("长江是中国最长的河流 and Python", return_tensors="pt")["input_ids"]
    from lmforge.train.checkpoint import load_checkpoint

    ours = load_checkpoint(out / "pretrain" / "checkpoint")
    with torch.no_grad():
        diff = (model(ids).logits - ours(ids)[0]).abs().max().item()
    assert diff < 1e-4


@pytest.mark.slow  # 50-70 s on two cores; the demo test pretrains a BERT with MLM and NSP in the default run
def test_bert_tiny_cpu_recipe_trains_mlm_and_nsp(tmp_path):
    from lmforge.flow import run_recipe

    recipe = load_recipe(shrunk("bert-tiny-cpu.yaml", tmp_path, docs=150, steps=40, eval_every=20, log_every=10))
    result = run_recipe(recipe, tmp_path / "run", base_dir=tmp_path)
    info = result.steps["pretrain"]
    assert info["arch"] == "bert" and result.steps["tokens"]["documents"]["val"] > 0
    assert list((tmp_path / "run" / "tokens" / "train").glob("shard-*.wrd"))  # BERT reads WordPiece token shards
    before, after = info["val_before"], info["val_after"]
    assert set(after) == {"mlm", "nsp", "loss"}
    assert after["mlm"] < before["mlm"] - 0.5
    log = [json.loads(x) for x in (tmp_path / "run" / "pretrain" / "log.jsonl").read_text().splitlines()]
    assert {"mlm", "nsp"} <= set(next(r for r in log if "terms" in r)["terms"])


def test_gpt2_124m_recipe_builds_the_gpt2_small_shape():
    recipe = load_recipe(RECIPES / "gpt2-124m.yaml")
    cfg = recipe.pretrain
    assert (cfg.seq_len, cfg.precision, cfg.compile, cfg.device) == (1024, "bf16", True, "cuda")
    from lmforge.train.pretrain import build_model

    with torch.device("meta"):
        model = build_model(cfg, vocab_size=50257)
    total = sum(p.numel() for p in model.parameters())
    assert total == pytest.approx(124.4e6, rel=0.01)  # GPT-2 small with its 50,257-token vocabulary
    assert (model.config.n_layer, model.config.n_embd, model.config.pos) == (12, 768, "learned")


def test_bert_recipe_rejects_a_gpt_preset():
    from lmforge.errors import ConfigError

    data = yaml.safe_load((RECIPES / "bert-tiny-cpu.yaml").read_text(encoding="utf-8"))
    data["pretrain"]["model"]["preset"] = "tiny"
    with pytest.raises(ConfigError, match=r"pretrain.model.preset: not a bert preset; allowed: bert-base, bert-mini"):
        parse_recipe(data, where="bert.yaml")
    data["pretrain"]["model"] = {"pos": "rope"}  # a GPT-only field
    with pytest.raises(ConfigError, match=r"pretrain.model.pos: unknown key for arch bert; allowed: preset, from"):
        parse_recipe(data, where="bert.yaml")


def test_gpt_reviews_recipe_is_decontaminated_against_the_sentiment_eval_splits(tmp_path):
    from lmforge.flow import run_recipe
    from lmforge.pipeline.runner import iter_output
    from lmforge.tasks.builtin import load_task

    recipe = load_recipe(shrunk("gpt-reviews-cpu.yaml", tmp_path, docs=3000, steps=5, eval_every=0, save_every=0))
    result = run_recipe(recipe, tmp_path / "run", base_dir=tmp_path)
    dropped = result.stats["stages"][-1]["dropped"]
    assert dropped.get("contaminated", 0) > 100  # reviews also in the task's validation/test splits
    task = load_task("zh_sentiment")
    held_out = {e.text for e in task.val + task.test}
    assert not held_out & {r.text for r in iter_output(result.output_dir)}
    assert result.steps["pretrain"]["steps"] == 5
