"""The rope/RMSNorm/SwiGLU decoder layout that Llama, Qwen2/3, Mistral and their MoE cousins share.

Those families write the same config.json keys and name their weights the same way
(`model.layers.N.self_attn.q_proj.weight`, ...); they differ in a handful of switches (biases,
q/k norms, sliding windows, experts) that each family's adapter sets as class attributes. The
rope scaling types are translated here once, for all of them.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lmforge.models.families.base import Family, Pair
from lmforge.models.gpt_config import GPTConfig, default_mlp_hidden
from lmforge.models.rope import SCALINGS

_ROPE_KEYS = {kind: required + optional for kind, (required, optional) in SCALINGS.items()}


class RopeDecoder(Family):
    qkv_bias: ClassVar[str] = "never"  # "never", "always" (Qwen2), or "attention_bias" (Llama: also o_proj)
    qk_norm: ClassVar[bool] = False
    sliding: ClassVar[str] = "none"  # "none", "all" (Mistral: every layer) or "layer_types" (Qwen)
    tie_default: ClassVar[bool] = False

    # ---- config.json -> GPTConfig fields

    def config_from_hf(self, raw: dict[str, Any]) -> dict[str, Any]:
        heads, hidden = self.need(raw, "num_attention_heads"), self.need(raw, "hidden_size")
        if raw.get("hidden_act", "silu") != "silu":
            raise self.refuse(f"hidden_act must be 'silu' (got {raw.get('hidden_act')!r})")
        if raw.get("attention_dropout"):
            raise self.refuse("attention_dropout must be 0 (lmforge fine-tunes without attention dropout)")
        kv = raw.get("num_key_value_heads") or heads
        head_dim = raw.get("head_dim") or hidden // heads if isinstance(hidden, int) and isinstance(heads, int) else None
        eps = raw.get("rms_norm_eps", 1e-6)
        theta, scaling = self.rope(raw)
        fields: dict[str, Any] = dict(
            vocab_size=self.need(raw, "vocab_size"),
            block_size=self.need(raw, "max_position_embeddings"),
            n_layer=self.need(raw, "num_hidden_layers"),
            n_head=heads, n_embd=hidden, n_kv_head=None if kv == heads else kv,
            head_size=None if head_dim == hidden // heads else head_dim,
            mlp_hidden=self.need(raw, "intermediate_size"),
            pos="rope", norm="rmsnorm", mlp="swiglu", qk_norm=self.qk_norm,
            norm_eps=None if eps == 1e-6 else eps, rope_theta=theta, rope_scaling=scaling,
            tie_embeddings=bool(raw.get("tie_word_embeddings", self.tie_default)),
            **self.biases(raw), **self.window(raw),
        )
        if scaling and scaling["type"] == "dynamic":  # the point of dynamic rope: longer than it was trained
            fields["block_size"] = int(fields["block_size"] * scaling["factor"])
        if fields["mlp_hidden"] == default_mlp_hidden(hidden, "swiglu"):
            fields["mlp_hidden"] = None  # the default size: keep the config as lmforge itself writes it
        return {**fields, **self.moe_from_hf(raw)}

    def biases(self, raw: dict[str, Any]) -> dict[str, Any]:
        if self.qkv_bias == "always":
            return {"bias": False, "qkv_bias": True}
        bias = bool(raw.get("attention_bias", False))
        if self.qkv_bias == "never" and bias:
            raise self.refuse(f"attention_bias must be false for {self.architecture}")
        if bool(raw.get("mlp_bias", False)) != bias:
            raise self.refuse("attention_bias and mlp_bias must be equal (lmforge has one bias switch)")
        return {"bias": bias}

    def window(self, raw: dict[str, Any]) -> dict[str, Any]:
        if self.sliding == "none" or not raw.get("sliding_window"):
            if raw.get("use_sliding_window") and self.sliding == "none":
                raise self.refuse("use_sliding_window is not supported for this family")
            return {}
        window = raw["sliding_window"]
        if self.sliding == "all":
            return {"sliding_window": window}
        types = raw.get("layer_types")
        if not types:
            if not raw.get("use_sliding_window"):
                return {}
            first = raw.get("max_window_layers", 0)
            types = ["sliding_attention" if i >= first else "full_attention" for i in range(raw["num_hidden_layers"])]
        layers = [i for i, t in enumerate(types) if t == "sliding_attention"]
        if any(t not in ("sliding_attention", "full_attention") for t in types):
            raise self.refuse(f"layer_types may hold sliding_attention and full_attention only (got {sorted(set(types))})")
        return {"sliding_window": window, "window_layers": layers} if layers else {}

    def rope(self, raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
        """(rope base, lmforge's rope_scaling) from rope_parameters or the older rope_theta + rope_scaling."""
        params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
        if params and all(isinstance(v, dict) for v in params.values()):  # one entry per attention type
            variants = list(params.values())
            if any(v != variants[0] for v in variants):
                raise self.refuse("rope_parameters differ between layer types; lmforge uses one rope")
            params = dict(variants[0])
        theta = float(params.pop("rope_theta", raw.get("rope_theta", 10000.0)))
        if params.pop("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)) != 1.0:
            raise self.refuse("partial_rotary_factor must be 1.0 (rope on every head dimension)")
        kind = params.pop("rope_type", params.pop("type", "default"))
        if kind == "default":
            return theta, None
        if kind not in _ROPE_KEYS:
            raise self.refuse(f"rope_type {kind!r} is not supported; lmforge implements default, "
                              f"{', '.join(sorted(_ROPE_KEYS))}")
        scaling = {"type": kind, **{k: v for k, v in params.items() if k in _ROPE_KEYS[kind] and v is not None}}
        if kind == "dynamic":  # transformers stretches from max_position_embeddings
            scaling["original_max_position_embeddings"] = raw.get("max_position_embeddings")
        return theta, scaling

    def moe_from_hf(self, raw: dict[str, Any]) -> dict[str, Any]:
        return {}

    # ---- GPTConfig -> config.json

    def check_exportable(self, config: GPTConfig) -> None:
        self.check_layout(config, {"pos": ("rope",), "norm": ("rmsnorm",), "mlp": ("swiglu",)})
        if config.qk_norm != self.qk_norm:
            raise self.unsupported(config, "qk_norm", self.architecture, f"the family has qk_norm={self.qk_norm}")
        if self.qkv_bias == "always" and (config.bias or not config.attn_bias):
            raise self.unsupported(config, "qkv_bias", self.architecture, "it has q/k/v biases and no others")
        if self.qkv_bias == "never" and (config.bias or config.attn_bias):
            raise self.unsupported(config, "bias", self.architecture, "it has no biases")
        if self.qkv_bias == "attention_bias" and config.attn_bias != config.bias:
            raise self.unsupported(config, "qkv_bias", self.architecture, "its biases are all on or all off")
        if config.sliding_window is not None and (
            self.sliding == "none" or (self.sliding == "all" and config.window_layers is not None)
        ):
            raise self.unsupported(config, "window_layers" if self.sliding == "all" else "sliding_window",
                                   self.architecture, "the family cannot slide these layers")
        scaling = config.rope_scaling
        if scaling and scaling["type"] == "dynamic" and not scaling.get("original_max_position_embeddings"):
            raise self.unsupported(config, "rope_scaling", self.architecture,
                                   "dynamic rope needs original_max_position_embeddings (transformers' length)")

    def hf_config(self, config: GPTConfig) -> dict[str, Any]:
        rope = {"rope_type": "default", "rope_theta": float(config.rope_theta)}
        max_positions = config.block_size
        if config.rope_scaling:
            rope = {**{k: v for k, v in config.rope_scaling.items() if k != "type"},
                    "rope_type": config.rope_scaling["type"], "rope_theta": float(config.rope_theta)}
            if rope["rope_type"] == "dynamic":  # transformers stretches from max_position_embeddings
                max_positions = rope.pop("original_max_position_embeddings")
        out: dict[str, Any] = dict(
            vocab_size=config.vocab_size, hidden_size=config.n_embd, intermediate_size=config.mlp_hidden_size,
            num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
            num_key_value_heads=config.kv_heads, head_dim=config.head_dim, hidden_act="silu",
            max_position_embeddings=max_positions, rms_norm_eps=config.eps, rope_parameters=rope,
            tie_word_embeddings=config.tie_embeddings, attention_dropout=0.0,
        )
        if self.qkv_bias == "attention_bias":
            out.update(attention_bias=config.bias, mlp_bias=config.bias)
        elif self.qkv_bias == "never" and self.qk_norm:
            out["attention_bias"] = False
        if config.sliding_window is not None and self.sliding == "all":
            out["sliding_window"] = config.sliding_window
        elif config.sliding_window is not None:
            layers = set(range(config.n_layer)) if config.window_layers is None else set(config.window_layers)
            out.update(use_sliding_window=True, sliding_window=config.sliding_window,
                       max_window_layers=min(layers, default=config.n_layer),
                       layer_types=["sliding_attention" if i in layers else "full_attention"
                                    for i in range(config.n_layer)])
        elif self.sliding != "none":
            out["sliding_window"] = None
        return {**out, **self.moe_to_hf(config)}

    def moe_to_hf(self, config: GPTConfig) -> dict[str, Any]:
        if config.n_expert:
            raise self.unsupported(config, "n_expert", self.architecture, "the family has no experts")
        return {}

    # ---- weights

    def weights(self, config: GPTConfig) -> list[Pair]:
        pairs = [Pair("transformer.wte.weight", ("model.embed_tokens.weight",)),
                 Pair("transformer.ln_f.weight", ("model.norm.weight",))]
        for i in range(config.n_layer):
            h, m = f"transformer.h.{i}.", f"model.layers.{i}."
            pairs += [Pair(h + "ln_1.weight", (m + "input_layernorm.weight",)),
                      Pair(h + "ln_2.weight", (m + "post_attention_layernorm.weight",))]
            for p in ("weight", "bias") if config.attn_bias else ("weight",):
                pairs.append(Pair(h + f"attn.c_attn.{p}", tuple(m + f"self_attn.{n}_proj.{p}" for n in "qkv")))
            for p in ("weight", "bias") if config.bias else ("weight",):
                pairs.append(Pair(h + f"attn.c_proj.{p}", (m + f"self_attn.o_proj.{p}",)))
            if config.qk_norm:
                pairs += [Pair(h + f"attn.{n}_norm.weight", (m + f"self_attn.{n}_norm.weight",)) for n in "qk"]
            if config.is_moe_layer(i):
                pairs += self.moe_weights(config, h + "mlp.", m)
            else:
                pairs += dense_mlp(config, h + "mlp.", m + "mlp.")
        if not config.tie_embeddings:
            pairs.append(Pair("lm_head.weight", ("lm_head.weight",)))
        return pairs

    def moe_weights(self, config: GPTConfig, ours: str, layer: str) -> list[Pair]:
        raise NotImplementedError


def dense_mlp(config: GPTConfig, ours: str, theirs: str) -> list[Pair]:
    """A SwiGLU MLP: our c_fc is rows [gate; up], c_proj is down."""
    pairs = []
    for p in ("weight", "bias") if config.bias else ("weight",):
        pairs += [Pair(ours + f"c_fc.{p}", (theirs + f"gate_proj.{p}", theirs + f"up_proj.{p}")),
                  Pair(ours + f"c_proj.{p}", (theirs + f"down_proj.{p}",))]
    return pairs


def experts(config: GPTConfig, ours: str, theirs: str, gate: str, up: str, down: str) -> list[Pair]:
    """Stacked experts from per-expert HF weights `{theirs}{e}.{gate|up|down}.weight`."""
    E = config.n_expert
    gate_up = tuple(f"{theirs}{e}.{n}.weight" for e in range(E) for n in (gate, up))
    return [Pair(ours + "gate_up", gate_up, experts=E),
            Pair(ours + "down", tuple(f"{theirs}{e}.{down}.weight" for e in range(E)), experts=E)]
