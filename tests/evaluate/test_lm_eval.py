"""An lmforge GPT exported to Hugging Face format runs unchanged in EleutherAI's lm-evaluation-harness."""

from __future__ import annotations

import json

import pytest
import torch
import yaml


def test_exported_gpt_evaluates_with_lm_eval_hf_model(tmp_path):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from lmforge.finetune.builtin_tasks import load_task
    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.models.hf import export_gpt_hf
    from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer

    data = load_task("zh_sentiment", max_per_class=60)
    tok = train_tokenizer([e.text for e in data.train], TokenizerConfig(vocab_size=600), tmp_path / "tok")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=600, block_size=256, n_layer=1, n_head=2, n_embd=32))
    hf = export_gpt_hf(model, tok, tmp_path / "hf")

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    rows = [{"text": e.text, "label": int(e.label == "pos")} for e in data.test]
    (tasks / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    spec = yaml.safe_load(open("recipes/lm-eval/lmforge_zh_sentiment.yaml", encoding="utf-8"))
    spec["dataset_kwargs"]["data_files"]["test"] = str(tasks / "test.jsonl")
    (tasks / "task.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")

    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={hf},dtype=float32", tasks=["lmforge_zh_sentiment"],
        task_manager=TaskManager(include_path=str(tasks)), device="cpu", batch_size=4)
    acc = results["results"]["lmforge_zh_sentiment"]["acc,none"]
    assert 0.0 <= acc <= 1.0
    assert results["results"]["lmforge_zh_sentiment"]["alias"] == "lmforge_zh_sentiment"
    assert len(results["samples"]["lmforge_zh_sentiment"]) == len(rows) if "samples" in results else True
