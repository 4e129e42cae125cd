"""GPT-2 (`GPT2LMHeadModel`): learned positions, LayerNorm, GELU, biases everywhere.

nanoGPT kept GPT-2's weight names, so only the Conv1D weights differ: they are stored (in, out).
GPT-2 always has biases, so a bias-free lmforge model is written with zero biases, and a GPT-2
directory whose biases are all exactly zero imports as bias-free (the same function).
"""

from __future__ import annotations

from typing import Any

from lmforge.models.families.base import Family, Pair
from lmforge.models.gpt_config import GPTConfig, default_mlp_hidden

_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


class GPT2(Family):
    model_type = "gpt2"
    architecture = "GPT2LMHeadModel"
    config_class = "GPT2Config"
    field_names = {"n_layer": "n_layer", "n_embd": "n_embd", "mlp_hidden": "n_inner", "block_size": "n_positions",
                   "n_head": "n_head"}

    def config_from_hf(self, raw: dict[str, Any]) -> dict[str, Any]:
        act = raw.get("activation_function", "gelu_new")
        if act not in _ACT:
            raise self.refuse(f"activation_function must be one of {sorted(_ACT)} (got {act!r})")
        if not raw.get("scale_attn_weights", True) or raw.get("scale_attn_by_inverse_layer_idx"):
            raise self.refuse("attention scaling other than 1/sqrt(head_dim) is not supported")
        if raw.get("add_cross_attention"):
            raise self.refuse("add_cross_attention must be false (lmforge's GPT is decoder-only)")
        n_embd, eps = self.need(raw, "n_embd"), raw.get("layer_norm_epsilon", 1e-5)
        fields = dict(vocab_size=self.need(raw, "vocab_size"), block_size=self.need(raw, "n_positions"),
                      n_layer=self.need(raw, "n_layer"), n_head=self.need(raw, "n_head"), n_embd=n_embd,
                      mlp_hidden=raw.get("n_inner"), pos="learned", norm="layernorm", mlp=_ACT[act],
                      dropout=raw.get("resid_pdrop", 0.1), norm_eps=None if eps == 1e-5 else eps, bias=True,
                      tie_embeddings=raw.get("tie_word_embeddings", True))
        if fields["mlp_hidden"] == default_mlp_hidden(n_embd, fields["mlp"]):
            fields["mlp_hidden"] = None
        return fields

    def refine(self, fields: dict[str, Any], read: Any) -> dict[str, Any]:
        """Bias-free when every stored bias is exactly zero (what export writes for a bias-free model)."""
        biases = [name for name in read.names() if name.endswith(".bias") and len(read.shape(name)) == 1]
        all_zero = all(bool((read.tensor(name) == 0).all()) for name in biases)
        return {**fields, "bias": not all_zero}

    def check_exportable(self, config: GPTConfig) -> None:
        self.check_layout(config, {"pos": ("learned",), "norm": ("layernorm",), "mlp": ("gelu", "gelu_tanh")})
        for field in ("qk_norm", "n_expert", "sliding_window", "qkv_bias"):
            if getattr(config, field):
                raise self.unsupported(config, field, self.architecture, "GPT-2 has no such option")

    def hf_config(self, config: GPTConfig) -> dict[str, Any]:
        return dict(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                    n_layer=config.n_layer, n_head=config.n_head, n_inner=config.mlp_hidden_size,
                    activation_function="gelu" if config.mlp == "gelu" else "gelu_pytorch_tanh",
                    resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
                    layer_norm_epsilon=config.eps, tie_word_embeddings=config.tie_embeddings)

    def weights(self, config: GPTConfig) -> list[Pair]:
        same = ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias")
        pairs = [Pair(n, (n,)) for n in same]
        for i in range(config.n_layer):
            h = f"transformer.h.{i}."
            pairs += [Pair(h + f"{norm}.{p}", (h + f"{norm}.{p}",)) for norm in ("ln_1", "ln_2")
                      for p in ("weight", "bias")]
            for lin in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                pairs += [Pair(h + f"{lin}.weight", (h + f"{lin}.weight",), transposed=True),
                          Pair(h + f"{lin}.bias", (h + f"{lin}.bias",))]
        if not config.tie_embeddings:
            pairs.append(Pair("lm_head.weight", ("lm_head.weight",)))
        return pairs

