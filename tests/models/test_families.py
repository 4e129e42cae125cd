"""Every open-weight family against `transformers`: tiny random-weight models made here, nothing downloaded.

Each family's config class is shrunk to a few layers and given the options that make it that
family (grouped-query heads, q/k/v biases, q/k norms, a head width of its own, sliding windows,
rope scalings, experts), saved with `save_pretrained`, imported into lmforge and compared in
float32: logits with padding, logits while decoding with a KV cache, greedy generation, the MoE
routers' logits, and export -> import.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lmforge.errors import ConfigError, InputError
from lmforge.models.gpt import GPT
from lmforge.models.hf import export_gpt_hf, import_gpt_hf

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))
from hf_families import CASES, PROMPTS, VOCAB, hf_model  # noqa: E402


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    hf = hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return request.param, hf, import_gpt_hf(path), path


def test_logits_match_with_right_padding(pair):
    _, _, ours, path = pair
    # A fresh copy: transformers' dynamic rope keeps the longest length an earlier test generated to.
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    torch.manual_seed(1)
    idx = torch.randint(0, VOCAB, (3, 24))
    lengths = [24, 17, 9]
    mask = torch.tensor([[1] * n + [0] * (24 - n) for n in lengths])
    with torch.no_grad():
        theirs = hf(input_ids=idx, attention_mask=mask).logits
        mine, _ = ours(idx)
    for row, n in enumerate(lengths):
        assert (mine[row, :n] - theirs[row, :n]).abs().max().item() < 1e-4


def greedy_with_cache(model: GPT, prompt: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    cache = model.new_kv_cache()
    logits, _ = model(torch.tensor([prompt]), kv_cache=cache)
    steps, out = [logits[0, -1]], []
    for _ in range(n):
        out.append(int(steps[-1].argmax()))
        logits, _ = model(torch.tensor([[out[-1]]]), kv_cache=cache)
        steps.append(logits[0, -1])
    return out, steps[:-1]


def test_cached_decoding_and_greedy_generation_match_transformers(pair):
    _, hf, ours, _ = pair
    for prompt in PROMPTS:
        with torch.no_grad():
            result = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=14, do_sample=False, min_new_tokens=14, output_logits=True,
                                 return_dict_in_generate=True)
            mine, steps = greedy_with_cache(ours, prompt, 14)
        assert result.sequences[0, len(prompt):].tolist() == mine
        theirs = torch.cat(result.logits)  # their own cached decoding, step by step
        assert (torch.stack(steps) - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("case", [c for c, (name, _) in CASES.items() if "Moe" in name or "Mixtral" in name])
def test_moe_router_logits_match(case, tmp_path):
    hf = hf_model(case)
    hf.save_pretrained(tmp_path)
    ours = import_gpt_hf(tmp_path)
    seen = []
    handles = [m.router.register_forward_hook(lambda _m, _i, out: seen.append(out)) for m in ours.moe_layers()]
    idx = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        theirs = hf(input_ids=idx, output_router_logits=True).router_logits
        ours(idx)
    for h in handles:
        h.remove()
    assert len(seen) == len(theirs) == len(ours.moe_layers())
    for mine, their in zip(seen, theirs, strict=True):
        assert (mine - their).abs().max().item() < 1e-4


def test_export_then_import_is_identical_and_transformers_reads_it(pair, tmp_path):
    case, hf, ours, _ = pair
    out = export_gpt_hf(ours, None, tmp_path / "back")
    again = import_gpt_hf(out)
    assert again.config == ours.config
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), again.state_dict().values(), strict=True))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is type(hf)
    idx = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():  # (not against `hf`: its dynamic rope remembers the longest sequence it saw)
        assert (reloaded(input_ids=idx).logits - ours(idx)[0]).abs().max().item() < 1e-4


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_import_keeps_the_stored_values(dtype, tmp_path):
    hf = hf_model("qwen3-moe").to(getattr(torch, dtype))
    hf.save_pretrained(tmp_path)
    model = import_gpt_hf(tmp_path, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
    expert = hf.model.layers[0].mlp.experts
    assert torch.equal(model.transformer.h[0].mlp.gate_up, expert.gate_up_proj)
    assert torch.equal(model.transformer.h[0].mlp.down, expert.down_proj)
    with torch.no_grad():
        logits, _ = model(torch.tensor([PROMPTS[0]]))
    assert logits.dtype == getattr(torch, dtype) and torch.isfinite(logits).all()


@pytest.mark.parametrize(("changes", "needle"), [
    ({"num_experts": 100_000, "num_local_experts": 100_000}, r"num_experts=100,000 describes"),
    ({"num_key_value_heads": 3}, r"n_head \(4\) must be a multiple of model.n_kv_head \(3\)"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, r"rope_scaling.factor is required"),
    ({"model_type": "deepseek_v3"}, r"'deepseek_v3' is not supported"),
])
def test_absurd_or_unsupported_configs_are_refused_before_allocation(changes, needle, tmp_path):
    import json

    hf_model("mixtral").save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw.update(changes)
    if "num_experts" in changes:
        raw["model_type"] = "qwen3_moe"
        raw.update(moe_intermediate_size=96, head_dim=16)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises((ConfigError, InputError), match=needle):
        import_gpt_hf(tmp_path)
