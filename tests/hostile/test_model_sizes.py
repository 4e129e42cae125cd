"""Absurd model sizes in a config are refused before anything is allocated (issue 19, item 23).

A checkpoint's or an HF directory's config.json saying `n_layer: 1000000`, or a recipe's
`pretrain.model`, used to be built first (22 GB, then death, or an allocator RuntimeError). Each
case runs the real command in a child process under a hard memory limit and must exit 2 with one
line naming the field, quickly and small.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
from hostile_limits import run_cli, run_json

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LIMIT_MB = 3000  # address space: python + torch (+ transformers) take under 1 GB of it
MAX_RSS_MB = 1200  # torch and transformers loaded, no model


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny real models on disk: lmforge GPT and BERT checkpoints, and their HF exports (Llama, GPT-2, BERT)."""
    import torch

    from lmforge.models.bert import BertConfig, BertForPretraining
    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.models.hf import export_gpt_hf
    from lmforge.models.hf_bert import export_bert_hf
    from lmforge.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32))
    gpt2 = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32, pos="learned",
                         norm="layernorm", mlp="gelu", bias=True))
    bert = BertForPretraining(BertConfig(vocab_size=64, max_position=64, n_layer=2, n_head=2, n_embd=32))
    out = {
        "gpt": save_checkpoint(gpt, gpt.config, root / "gpt"),
        "bert": save_checkpoint(bert, bert.config, root / "bert"),
        "llama": export_gpt_hf(gpt, None, root / "llama"),
        "gpt2": export_gpt_hf(gpt2, None, root / "gpt2"),
        "hf_bert": export_bert_hf(bert, None, root / "hf_bert"),
    }
    return {k: Path(v) for k, v in out.items()}


def _with(src: Path, dest: Path, **changes) -> Path:
    shutil.copytree(src, dest)
    config = json.loads((dest / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (dest / "config.json").write_text(json.dumps(config))
    return dest


# Every case goes through the real CLI entry point (`lmforge.cli.main.main`), all of them in one child
# process under the limits, so that torch is imported once rather than twenty times.
CLI_CASES = textwrap.dedent("""
    import contextlib, io, json, sys, time
    from lmforge.cli.main import main
    results = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        results.append({"code": code, "stderr": err.getvalue(), "seconds": time.perf_counter() - t0})
    print(json.dumps(results))
""")


def _refused_in_one_child(cases: list[tuple[list[str], str]]) -> None:
    """Run each (argv, field) through the CLI in one child: each exits 2 with one line naming the field and the
    bytes, quickly, and the child stays small throughout."""
    code = CLI_CASES.replace("sys.argv[1]", repr(json.dumps([argv for argv, _ in cases])))
    results, peak, _ = run_json(code, timeout=300, address_space_mb=LIMIT_MB)
    for (argv, field), got in zip(cases, results, strict=True):
        lines = [line for line in got["stderr"].splitlines() if line.strip()]
        assert got["code"] == 2, (argv, got)
        assert len(lines) == 1 and field in lines[0] and "bytes" in lines[0], (argv, got["stderr"][-1500:])
        assert got["seconds"] < 30, (argv, got["seconds"])
    assert peak < MAX_RSS_MB, peak


CHECKPOINT_CASES = [
    ("gpt", {"n_layer": 1_000_000}, "n_layer"),
    ("gpt", {"n_embd": 10_000_000}, "n_embd"),
    ("gpt", {"vocab_size": 10_000_000_000}, "vocab_size"),
    ("gpt", {"block_size": 10**12}, "block_size"),
    ("gpt", {"mlp_hidden": 10**9}, "mlp_hidden"),
    ("gpt", {"n_layer": 3000}, "n_layer"),  # fits in memory, but the weights on disk hold 2 layers
    ("bert", {"n_layer": 1_000_000}, "n_layer"),
    ("bert", {"vocab_size": 10_000_000_000, "pad_id": 0}, "vocab_size"),
    ("bert", {"intermediate": 10**9}, "intermediate"),
]
HF_CASES = [
    ("llama", {"num_hidden_layers": 1_000_000}, "num_hidden_layers"),
    ("llama", {"hidden_size": 10_000_000, "head_dim": None}, "hidden_size"),
    ("llama", {"vocab_size": 10_000_000_000}, "vocab_size"),
    ("llama", {"num_hidden_layers": 3000}, "num_hidden_layers"),
    ("gpt2", {"n_layer": 1_000_000}, "n_layer"),
    ("gpt2", {"n_positions": 10**11}, "n_positions"),
]


def test_checkpoints_and_hf_directories_with_absurd_sizes_are_refused(models, tmp_path):
    cases = []
    for i, (kind, changes, field) in enumerate(CHECKPOINT_CASES):
        ckpt = _with(models[kind], tmp_path / f"ckpt{i}", **changes)
        cases.append((["export", str(ckpt), "--out", str(tmp_path / f"hf{i}")], field))
    cases.append((["generate", str(_with(models["gpt"], tmp_path / "gen", n_layer=1_000_000)), "hello"], "n_layer"))
    for i, (kind, changes, field) in enumerate(HF_CASES):
        cases.append((["generate", str(_with(models[kind], tmp_path / f"hfdir{i}", **changes)), "hello"], field))
    _refused_in_one_child(cases)
    assert not any((tmp_path / f"hf{i}").exists() for i in range(len(CHECKPOINT_CASES)))


def test_the_command_itself_exits_2_with_one_line(models, tmp_path):
    """One case through a real `lmforge` process: the exit status and stderr a shell sees."""
    ckpt = _with(models["gpt"], tmp_path / "ckpt", n_layer=1_000_000)
    m = run_cli("export", str(ckpt), "--out", str(tmp_path / "hf"), timeout=120, address_space_mb=LIMIT_MB)
    lines = [line for line in m.stderr.splitlines() if line.strip()]
    assert not m.timed_out and m.returncode == 2, (m.returncode, m.stderr[-1500:])
    assert len(lines) == 1 and "n_layer" in lines[0] and "bytes" in lines[0], m.stderr[-1500:]
    assert m.peak_rss_mb < MAX_RSS_MB, m.peak_rss_mb


IMPORT_BERT = textwrap.dedent("""
    import json, sys
    from lmforge.errors import UserError
    from lmforge.models.hf_bert import import_bert_hf
    errors = []
    for path in json.loads(sys.argv[1]):
        try:
            import_bert_hf(path)
            errors.append(None)
        except UserError as exc:
            errors.append([exc.exit_code, str(exc)])
    print(json.dumps(errors))
""")


def test_hf_bert_with_absurd_size_is_refused(models, tmp_path):
    cases = [({"num_hidden_layers": 1_000_000}, "num_hidden_layers"), ({"vocab_size": 10_000_000_000}, "vocab_size")]
    paths = [str(_with(models["hf_bert"], tmp_path / f"hf{i}", **changes)) for i, (changes, _) in enumerate(cases)]
    errors, peak, _ = run_json(IMPORT_BERT.replace("sys.argv[1]", repr(json.dumps(paths))), timeout=120,
                               address_space_mb=LIMIT_MB)
    for (_, field), error in zip(cases, errors, strict=True):
        assert error is not None and error[0] == 2 and field in error[1] and "bytes" in error[1], error
        assert "\n" not in error[1]
    assert peak < MAX_RSS_MB, peak


def test_recipes_with_absurd_models_are_refused_before_any_work(corpus_dir, tmp_path):
    cases = []
    for i, (arch, preset, field, value) in enumerate([("gpt", "tiny", "n_layer", 1_000_000),
                                                       ("gpt", "tiny", "n_embd", 10_000_000),
                                                       ("bert", "bert-tiny", "n_layer", 1_000_000)]):
        recipe = tmp_path / f"recipe{i}.yaml"
        recipe.write_text(textwrap.dedent(f"""
            input: {{files: ["{corpus_dir}/*.jsonl*"]}}
            pipeline: [normalize]
            tokenizer: {{vocab_size: 300{", kind: wordpiece" if arch == "bert" else ""}}}
            pretrain: {{arch: {arch}, preset: {preset}, steps: 5, model: {{{field}: {value}}}}}
        """), encoding="utf-8")
        cases.append((["pretrain", str(recipe), "--out", str(tmp_path / f"run{i}")], f"pretrain.model.{field}"))
    _refused_in_one_child(cases)
    for i in range(3):
        assert not (tmp_path / f"run{i}" / "stages").exists(), "the data steps ran before the model size was checked"


def test_size_parts_count_every_element(one_torch_thread):
    """The formulas the checks use give exactly what the modules allocate (parameters and buffers)."""
    from lmforge.models.bert import BertConfig, BertForPretraining
    from lmforge.models.gpt import GPT, GPTConfig

    configs = [
        GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16),
        GPTConfig(vocab_size=50, block_size=16, n_layer=3, n_head=2, n_embd=16, pos="learned", norm="layernorm",
                  mlp="gelu", bias=True, tie_embeddings=False),
        GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=4, n_embd=32, qk_norm=True, mlp_hidden=40),
        GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=4, n_embd=32, norm="layernorm", bias=False),
    ]
    for cfg in configs:
        model = GPT(cfg)
        allocated = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
        assert sum(p.elements for p in cfg.size_parts()) == allocated, cfg
        stored = sum({t.data_ptr(): t.numel() for t in model.state_dict().values()}.values())  # tied: once
        assert sum(p.elements for p in cfg.size_parts() if p.stored) == stored, cfg
    for cfg in [BertConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=16),
                BertConfig(vocab_size=70, n_layer=1, n_head=2, n_embd=16, intermediate=24, type_vocab_size=3)]:
        model = BertForPretraining(cfg)
        allocated = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
        assert sum(p.elements for p in cfg.size_parts()) == allocated, cfg


def test_check_hf_dir_guards_transformers_loads(models, tmp_path):
    """`check_hf_dir` bounds any architecture transformers would build (here one lmforge cannot import)."""
    from lmforge.models.sizes import ModelTooLarge, check_hf_dir

    check_hf_dir(models["llama"])
    check_hf_dir(models["hf_bert"])
    mistral = _with(models["llama"], tmp_path / "mistral", model_type="mistral", num_key_value_heads=1,
                    num_hidden_layers=1_000_000)
    with pytest.raises(ModelTooLarge, match="num_hidden_layers=1,000,000"):
        check_hf_dir(mistral)
    vision = _with(models["llama"], tmp_path / "vlm", model_type="llava", vocab_size=None, hidden_size=None,
                   num_hidden_layers=None, text_config={"vocab_size": 10**10, "hidden_size": 32, "num_hidden_layers": 2})
    with pytest.raises(ModelTooLarge, match="vocab_size=10,000,000,000"):
        check_hf_dir(vision)
