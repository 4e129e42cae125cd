"""Importing a sharded checkpoint costs the model's own memory plus little: measured in a child process.

The child first imports a tiny model (lazy imports and allocator pools are paid once per process,
not per checkpoint), resets its peak-RSS counter (/proc/self/clear_refs), imports the sharded
checkpoint and reports VmHWM. The rise must stay within 1.3x the bytes of the weights in the
dtype asked for; `safetensors.load_file` followed by `load_state_dict` needs about 2x.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

transformers = pytest.importorskip("transformers")

CHILD = textwrap.dedent("""
    import sys
    from lmforge.models.hf import import_gpt_hf

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    import_gpt_hf(sys.argv[3], dtype=sys.argv[2])
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = status("VmRSS:")
    model = import_gpt_hf(sys.argv[1], dtype=sys.argv[2])
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(before, status("VmHWM:"), weights)
""")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """~120 MB of bf16 Qwen2 weights in five shards, and a tiny model for the child's warm-up."""
    root = tmp_path_factory.mktemp("sharded")
    config = transformers.Qwen2Config(vocab_size=32000, hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
                                      num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(root / "big", max_shard_size="30MB")
    small = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2)
    transformers.Qwen2ForCausalLM(small).save_pretrained(root / "tiny")
    return root


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_sharded_import_peaks_within_1_3x_the_weights(sharded, dtype):
    index = json.loads((sharded / "big" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 4  # really sharded
    run = subprocess.run([sys.executable, "-c", CHILD, str(sharded / "big"), dtype, str(sharded / "tiny")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    before, peak, weights = map(int, run.stdout.split())
    assert weights > 100e6
    assert peak - before <= 1.3 * weights, f"peak rose {(peak - before) / weights:.2f}x the weights"


def test_sharded_import_equals_the_weights_on_disk(sharded):
    from lmforge.models.hf import import_gpt_hf

    model = import_gpt_hf(sharded / "big", dtype="bfloat16")
    hf = transformers.AutoModelForCausalLM.from_pretrained(sharded / "big", dtype=torch.bfloat16)
    layer = hf.model.layers[5].self_attn
    qkv = torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight])
    assert torch.equal(model.transformer.h[5].attn.c_attn.weight, qkv)
    assert torch.equal(model.transformer.h[5].attn.c_attn.bias,
                       torch.cat([layer.q_proj.bias, layer.k_proj.bias, layer.v_proj.bias]))
    assert torch.equal(model.lm_head.weight, hf.lm_head.weight)
