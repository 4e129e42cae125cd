"""An lmforge GPT exported to Hugging Face format runs unchanged in EleutherAI's lm-evaluation-harness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml


def test_exported_gpt_evaluates_with_lm_eval_hf_model(tmp_path):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.models.hf import export_gpt_hf
    from lmforge.tasks.builtin import load_task
    from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer

    data = load_task("zh_sentiment", max_per_class=60)
    tok = train_tokenizer([e.text for e in data.train], TokenizerConfig(vocab_size=600), tmp_path / "tok")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=600, block_size=256, n_layer=1, n_head=2, n_embd=32))
    hf = export_gpt_hf(model, tok, tmp_path / "hf")

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    rows = [{"text": e.text, "label": int(e.label == "pos")} for e in data.test if len(e.text) < 120]
    (tasks / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    task_file = Path(__file__).parents[2] / "recipes" / "lm-eval" / "lmforge_zh_sentiment.yaml"
    spec = yaml.safe_load(task_file.read_text(encoding="utf-8"))
    spec["dataset_kwargs"]["data_files"]["test"] = str(tasks / "test.jsonl")
    (tasks / "task.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")

    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={hf},dtype=float32", tasks=["lmforge_zh_sentiment"],
        task_manager=TaskManager(include_path=str(tasks)), device="cpu", batch_size=4, log_samples=True)
    assert results["n-samples"]["lmforge_zh_sentiment"]["effective"] == len(rows)

    # The harness's log-likelihoods are the lmforge model's own: recompute each with the lmforge GPT.
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(hf)
    correct = 0
    for sample in results["samples"]["lmforge_zh_sentiment"]:
        ours = []
        for (context, continuation), [(theirs, _)] in zip(sample["arguments"], sample["resps"], strict=True):
            assert not continuation.startswith(" ")  # target_delimiter "" for Chinese
            whole = hf_tok(context + continuation)["input_ids"]
            start = len(hf_tok(context)["input_ids"])
            with torch.no_grad():
                logits, _ = model(torch.tensor([whole[:-1]]))
            logp = torch.log_softmax(logits[0].double(), -1)
            ours.append(sum(float(logp[i - 1, whole[i]]) for i in range(start, len(whole))))
            assert ours[-1] == pytest.approx(theirs, abs=1e-3)
        correct += int(max(range(len(ours)), key=ours.__getitem__) == sample["target"])
    acc = results["results"]["lmforge_zh_sentiment"]["acc,none"]
    assert acc == pytest.approx(correct / len(rows))
