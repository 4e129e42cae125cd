"""An open-weight MoE checkpoint on disk, instruction-tuned with LoRA by lmforge's Trainer, exported back.

A tiny Qwen3-MoE made by `transformers` (random weights, grouped-query attention, 4 experts) is
imported into lmforge's GPT, tuned with LoRA on attention, MLPs and every expert, with activation
checkpointing and bf16 autocast, saved (adapters merged), and exported to the family's HF class
and to GGUF; both read back with the tuned weights.
"""

from __future__ import annotations

import pytest
import torch

from lmforge.finetune.config import FinetuneConfig, LoraSettings
from lmforge.finetune.lora import apply_lora
from lmforge.finetune.run import finetune
from lmforge.models.heads import load_task_model
from lmforge.models.hf import import_gpt_hf
from lmforge.tasks.builtin import load_task
from lmforge.tokenize.bpe import TokenizerConfig, copy_tokenizer_files, train_tokenizer

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def qwen_moe_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen-moe")
    data = load_task("instructions", max_per_task=12)
    tok = train_tokenizer([e.prompt + e.response for e in data.train], TokenizerConfig(vocab_size=600), root / "tok")
    config = transformers.Qwen3MoeConfig(vocab_size=600, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4,
                                         num_experts_per_tok=2, moe_intermediate_size=32, max_position_embeddings=256, norm_topk_prob=True,
                                         tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.Qwen3MoeForCausalLM(config).save_pretrained(root / "hf")
    copy_tokenizer_files(tok, root / "hf", 256)
    return root / "hf", data


def test_lora_reaches_every_expert_and_merges_exactly(qwen_moe_dir):
    from lmforge.models.heads import CausalLMAdapter, save_task_model

    model = CausalLMAdapter(import_gpt_hf(qwen_moe_dir[0]))
    peft_model = apply_lora(model, LoraSettings(r=4))
    trainable = {n.split("backbone.")[-1] for n, p in peft_model.named_parameters() if p.requires_grad}
    assert {"transformer.h.0.attn.c_attn.lora_A.default.weight", "transformer.h.1.attn.c_proj.lora_B.default.weight",
            "transformer.h.0.mlp.lora_gate_up_A", "transformer.h.1.mlp.lora_down_B"} <= trainable
    assert not any("router" in n or n.endswith(("mlp.gate_up", "mlp.down")) for n in trainable)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n or n.endswith("_B"):
                p.normal_(0, 0.05)  # as if trained
    idx = torch.randint(0, 600, (2, 12))
    with torch.no_grad():
        tuned = peft_model.eval()(input_ids=idx)  # eval: no LoRA dropout
    saved, _ = load_task_model(save_task_model(peft_model, qwen_moe_dir[0].parent / "saved", {"kind": "instruction"}))
    with torch.no_grad():
        assert (saved(input_ids=idx) - tuned).abs().max().item() < 1e-4
    assert any(p.requires_grad for n, p in peft_model.named_parameters() if "lora" in n)  # the live model kept them


def test_instruction_tuning_an_hf_moe_with_lora_then_export(qwen_moe_dir, tmp_path):
    hf_dir, data = qwen_moe_dir
    cfg = FinetuneConfig.model_validate({
        "task": "instruction", "data": {"builtin": "instructions", "options": {"max_per_task": 12}},
        "model": {"from": str(hf_dir)}, "lora": {"r": 4}, "epochs": 1, "batch_size": 8, "lr": 3e-3, "seq_len": 96,
        "activation_checkpointing": True, "precision": "bf16", "tensorboard": False, "device": "cpu",
        "generate_examples": 2})
    result = finetune(cfg, tmp_path / "ft", data=data)
    assert result.steps >= 3 and result.test["perplexity"] < 600
    tuned, info = load_task_model(result.best_dir)
    assert info["head"] == "CausalLMAdapter" and not any("lora" in n for n, _ in tuned.named_parameters())
    before = import_gpt_hf(hf_dir)
    assert not torch.equal(tuned.backbone.transformer.h[0].mlp.gate_up, before.transformer.h[0].mlp.gate_up)

    from lmforge.models.export import export_gguf, export_hf

    path, cls = export_hf(result.best_dir, None, tmp_path / "hf-out")
    assert cls == "Qwen3MoeForCausalLM" and (path / "tokenizer.json").is_file()
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    idx = torch.randint(0, 600, (1, 16))
    with torch.no_grad():
        assert (hf(input_ids=idx).logits - tuned.backbone(idx)[0]).abs().max().item() < 1e-4

    gguf = pytest.importorskip("gguf")
    file, arch = export_gguf(result.best_dir, None, tmp_path / "tuned.gguf", "q8_0")
    reader = gguf.GGUFReader(str(file))
    names = {t.name for t in reader.tensors}
    assert arch == "Qwen3MoeForCausalLM" and {"blk.0.ffn_gate_exps.weight", "blk.1.attn_q_norm.weight"} <= names
