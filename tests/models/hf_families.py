"""Tiny random-weight models of every open-weight family, built by `transformers` here (nothing downloaded).

Not a test module: test files load it with `sys.path` (pytest runs with --import-mode=importlib).
"""

from __future__ import annotations

import torch
import transformers

VOCAB = 320
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=64, rms_norm_eps=1e-5)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
CASES = {
    "llama3": ("LlamaConfig", dict(num_key_value_heads=2, rope_parameters=LLAMA3_ROPE)),
    "llama-bias-mqa": ("LlamaConfig", dict(num_key_value_heads=1, attention_bias=True, mlp_bias=True,
                                           tie_word_embeddings=True)),
    "qwen2-window": ("Qwen2Config", dict(num_key_value_heads=2, tie_word_embeddings=True, use_sliding_window=True,
                                         sliding_window=6, max_window_layers=1,
                                         rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                                          "original_max_position_embeddings": 16})),
    "qwen3-dynamic": ("Qwen3Config", dict(num_key_value_heads=2, head_dim=32, max_position_embeddings=16,
                                          rope_parameters={"rope_type": "dynamic", "rope_theta": 1e6, "factor": 2.0})),
    "mistral-linear": ("MistralConfig", dict(num_key_value_heads=2, sliding_window=5,
                                             rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0})),
    "mixtral": ("MixtralConfig", dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)),
    "qwen3-moe": ("Qwen3MoeConfig", dict(num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=3,
                                         moe_intermediate_size=32, num_hidden_layers=3, mlp_only_layers=[1])),
    "qwen3-moe-norm": ("Qwen3MoeConfig", dict(num_key_value_heads=4, num_experts=4, num_experts_per_tok=2,
                                              moe_intermediate_size=32, norm_topk_prob=True)),
    "qwen2-moe-shared": ("Qwen2MoeConfig", dict(num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                                                moe_intermediate_size=32, shared_expert_intermediate_size=48)),
}
PROMPTS = [[5, 17, 42, 7], [300, 2, 9], [11] * 9, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]


def hf_model(case: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A random-weight transformers model whose norms are not all ones, so a mix-up shows."""
    name, options = CASES[case]
    config = getattr(transformers, name)(**{**SMALL, **options})
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, config.architectures[0] if config.architectures else
                    name.replace("Config", "ForCausalLM"))(config).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
            elif "gate" in n and p.dim() == 2 and p.size(0) < 16:  # routers: make the choice decisive
                p.mul_(20)
    return model


