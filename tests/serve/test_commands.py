"""`lmforge generate` and `lmforge serve` as Python calls: the same text as the command and the engine."""

from __future__ import annotations

import pytest

from lmforge.cli.main import main
from lmforge.errors import ConfigError
from lmforge.serve.commands import generate_completions, serve_model, stream_completion
from lmforge.serve.generate import generate_batch
from lmforge.serve.loading import load_generator
from lmforge.serve.sampling import SamplingParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_generate_completions_match_the_engine_and_the_command(tiny_model_dir, capsys):
    prompts = ["The function", "你好"]
    got = generate_completions(tiny_model_dir, prompts, max_new_tokens=8, temperature=0, device="cpu")
    loaded = load_generator(tiny_model_dir, device="cpu")
    want = generate_batch(loaded.model, loaded.tokenizer, prompts, SamplingParams(max_new_tokens=8, temperature=0),
                          loaded.stop_ids)
    assert [[c.token_ids for c in row] for row in got] == [[c.token_ids for c in row] for row in want]
    assert [len(row) for row in got] == [1, 1] and all(len(row[0].token_ids) <= 8 for row in got)
    assert main(["generate", str(tiny_model_dir), *prompts, "--max-new-tokens", "8", "--temperature", "0",
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().err  # the console the command prints to is stderr
    for prompt, row in zip(prompts, got, strict=True):
        assert prompt in printed and f"({len(row[0].token_ids)} tokens, {row[0].finish_reason})" in printed
    streamed = "".join(stream_completion(tiny_model_dir, prompts[0], max_new_tokens=8, temperature=0, device="cpu"))
    assert streamed == got[0][0].text


def test_sampled_completions_follow_the_seed(tiny_model_dir):
    def run(seed):
        rows = generate_completions(tiny_model_dir, ["The"], max_new_tokens=6, n=3, seed=seed, device="cpu")
        return [c.token_ids for c in rows[0]]

    assert len(run(1)) == 3 and run(1) == run(1)


def test_serve_model_refuses_bad_settings_before_loading(tmp_path):
    with pytest.raises(ConfigError, match="slots"):
        serve_model(tmp_path / "no-model", slots=0)
    with pytest.raises(ConfigError, match="api_keys"):
        serve_model(tmp_path / "no-model", api_keys=[""])
