"""Real run directories made by the real pipeline on small built-in data, shared by the report tests."""

from __future__ import annotations

import pytest

# Prompts with markup and CJK: the report must show them as text, never as HTML.
PROMPTS = ["中国", "<b>The</b> & "]

FULL_RECIPE = """
name: report-full
input:
  builtin: {corpora: [peoples_daily, reviews, python_docs], max_docs_per_corpus: 70}
  shard_size: 40
executor: {kind: local, workers: 1}
pipeline:
  - normalize: {}
  - length_filter: {min_chars: 20}
  - langid: {}
  - exact_dedup: {}
  - minhash_dedup: {}
tokenizer: {vocab_size: 400}
pretrain: {preset: tiny, seq_len: 32, batch_size: 4, steps: 8, eval_every: 4, eval_batches: 2, log_every: 2,
           warmup_steps: 2, val_percent: 10, tensorboard: false, device: cpu}
generate: {prompts: PROMPTS, max_new_tokens: 6}
"""


@pytest.fixture(scope="session")
def full_run(tmp_path_factory):
    """The whole flow (clean, langid, exact + MinHash dedup, tokenizer, 8 pretraining steps, samples)."""
    import json

    import torch
    import yaml

    from lmforge.flow import run_recipe
    from lmforge.flow.recipe import parse_recipe

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        body = FULL_RECIPE.replace("PROMPTS", json.dumps(PROMPTS, ensure_ascii=False))
        recipe = parse_recipe(yaml.safe_load(body), where="report test")
        root = tmp_path_factory.mktemp("report")
        result = run_recipe(recipe, root / "run", base_dir=root)
    finally:
        torch.set_num_threads(threads)
    return result
