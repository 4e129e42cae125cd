"""Offline generation: many prompts through the continuous-batching engine, as plain calls.

`generate_batch` is what `lmforge generate`, the demo's samples and the benchmarks use; the
server drives the same engine from a thread. Prompts that do not fit the context are cut from
the left (the most recent text matters most for continuation), with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lmforge.errors import UserError
from lmforge.serve.engine import Engine, Event
from lmforge.serve.sampling import SamplingParams

logger = logging.getLogger(__name__)

@dataclass
class Completion:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


def fit_prompt(ids: list[int], params: SamplingParams, max_len: int) -> list[int]:
    room = max(1, max_len - params.max_new_tokens)
    if len(ids) > room:
        logger.warning("prompt of %d tokens cut to its last %d to leave room for %d new tokens",
                       len(ids), room, params.max_new_tokens)
        return ids[-room:]
    return ids


def _prompt_ids(prompt: str | list[int], tokenizer: Any, stop_ids: list[int]) -> list[int]:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise UserError("text prompts need a tokenizer")
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    else:
        ids = list(prompt)
    if not ids:
        if not stop_ids:
            raise UserError("cannot generate from an empty prompt without an end-of-text token")
        ids = [stop_ids[0]]  # documents follow an end-of-text token in training: the natural start
    return ids


def generate_batch(model: Any, tokenizer: Any, prompts: list[str] | list[list[int]],
                   params: SamplingParams | Sequence[SamplingParams], stop_ids: list[int] | None = None,
                   slots: int = 8) -> list[list[Completion]]:
    """`params.n` completions per prompt; prompts share the engine's batch as slots allow.

    `params` may be one per prompt (each prompt its own seed, as `samples` gives them).
    """
    stop_ids = list(stop_ids or [])
    each = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    if len(each) != len(prompts):
        raise UserError(f"{len(each)} sampling parameters for {len(prompts)} prompts")
    each = [replace(p, max_new_tokens=min(p.max_new_tokens, model.config.block_size - 1)) for p in each]
    was_training = model.training
    ids = [fit_prompt(_prompt_ids(prompt, tokenizer, stop_ids), p, model.config.block_size)
           for prompt, p in zip(prompts, each, strict=True)]
    # The cache holds what these prompts need, not the model's whole context (32k slots of Qwen2.5 are GBs).
    need = max((len(i) + p.max_new_tokens for i, p in zip(ids, each, strict=True)), default=1) + 1
    engine = Engine(model, tokenizer, slots=max([slots, *(p.n for p in each)]), stop_ids=stop_ids,
                    max_len=min(need, model.config.block_size))
    results = [[Completion() for _ in range(p.n)] for p in each]

    def sink_for(i: int):
        def sink(ev: Event) -> None:
            c = results[i][ev.index]
            c.text += ev.text
            c.token_ids += ev.token_ids
            c.finish_reason = ev.finish_reason or c.finish_reason
        return sink

    try:
        for i, (prompt_ids, p) in enumerate(zip(ids, each, strict=True)):
            engine.submit(prompt_ids, p, sink_for(i))
        engine.run()
    finally:
        model.train(was_training)
    return results


def generate(model: Any, tokenizer: Any, prompts: list[str], params: SamplingParams,
             stop_ids: list[int] | None = None) -> list[str]:
    """Continue each prompt; returns the continuation text only (the first sample of each)."""
    if stop_ids is None and tokenizer is not None:
        from lmforge.tokenize.bpe import EOS_TOKEN

        stop_ids = [i for i in [tokenizer.token_to_id(EOS_TOKEN)] if i is not None]
    return [c[0].text for c in generate_batch(model, tokenizer, prompts, params, stop_ids)]


def generate_tokens(model: Any, prompt_ids: list[int], params: SamplingParams, eos_id: int | None) -> list[int]:
    """Only the new token ids for one prompt (without the end token that stopped generation)."""
    stops = [] if eos_id is None else [eos_id]
    return generate_batch(model, None, [prompt_ids], params, stops, slots=1)[0][0].token_ids


def stream(model: Any, tokenizer: Any, prompt: str | list[int], params: SamplingParams,
           stop_ids: list[int] | None = None) -> Iterator[str]:
    """Text pieces of one completion as they are decoded (the CLI's --stream)."""
    ids = fit_prompt(_prompt_ids(prompt, tokenizer, list(stop_ids or [])), params, model.config.block_size)
    engine = Engine(model, tokenizer, slots=1, stop_ids=stop_ids,
                    max_len=min(len(ids) + params.max_new_tokens + 1, model.config.block_size))
    pieces: list[Event] = []
    engine.submit(ids, params, pieces.append)
    while engine.busy:
        engine.step()
        while pieces:
            ev = pieces.pop(0)
            if ev.text:
                yield ev.text


def load_for_generation(checkpoint_dir: str | Path, tokenizer_dir: str | Path, device: str = "auto"):
    """(model, tokenizer) of an lmforge checkpoint and its tokenizer directory."""
    from lmforge.serve.loading import load_generator

    loaded = load_generator(checkpoint_dir, tokenizer_dir, device=device)
    return loaded.model, loaded.tokenizer


def generate_responses(model: Any, prompts: list[str], tokenizer: Any, max_new_tokens: int) -> list[str]:
    """Greedy answers to chat prompts, stopping at the end-of-turn token: a fine-tuned lmforge GPT
    (decoded by the engine) or a Hugging Face causal LM (`generate`). `tokenizer` is a transformers one."""
    import torch

    from lmforge.models.protocols import CausalLM, HasBackbone

    stop = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else \
        tokenizer.eos_token_id
    gen = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    gpt = model.backbone if isinstance(model, HasBackbone) and isinstance(model.backbone, CausalLM) else None
    answers = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if gpt is not None:
            ids = ids[-(gpt.config.block_size - max_new_tokens):]
            new = generate_tokens(gpt, ids, gen, stop)
        else:
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=stop, pad_token_id=stop)
            new = [t for t in out[0, len(ids):].tolist() if t != stop]
        answers.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return answers
