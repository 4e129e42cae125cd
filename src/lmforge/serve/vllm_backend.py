"""vLLM as the server's backend, behind the same API, where vLLM and a GPU exist.

vLLM loads Hugging Face directories, so an lmforge checkpoint or run is exported first (Llama,
Qwen3 or GPT-2 layout). Prompts go in as token ids made by the same tokenizer the lmforge
backend uses, so both backends see identical inputs; vLLM's cumulative outputs are turned
into the same text deltas and finish reasons as lmforge's engine produces.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from lmforge.errors import MissingDependencyError, UserError
from lmforge.serve.engine import Event, check_fits
from lmforge.serve.loading import LoadedModel
from lmforge.serve.sampling import SamplingParams

logger = logging.getLogger(__name__)


def _hf_dir(model: Path, tokenizer: Path | None, tmp: Path) -> tuple[Path, Path | None]:
    """An HF directory for `model`; lmforge runs and checkpoints are exported into `tmp`."""
    from lmforge.models.source import SourceKind, resolve_source

    source = resolve_source(model, tokenizer)
    if source.is_hf:
        return source.path, tokenizer
    if source.kind is not SourceKind.CHECKPOINT:
        raise UserError(f"{source.path} is a fine-tuned task model; the vllm backend serves pretrained checkpoints, "
                        "runs and Hugging Face directories (use --backend lmforge)")
    from lmforge.models.export import export_hf

    out, _ = export_hf(source.path, source.require_tokenizer(), tmp / "hf")
    return out, None


class VLLMBackend:
    supports_logprobs = False  # logprobs and logit_bias are refused (400) rather than silently dropped
    def __init__(self, source: tuple[str | Path, str | Path | None], slots: int) -> None:
        try:
            import torch
            from vllm import AsyncEngineArgs, AsyncLLMEngine
        except ImportError as exc:
            raise MissingDependencyError(f"the vllm backend needs the 'vllm' package and a GPU ({exc})") from None
        if not torch.cuda.is_available():
            raise UserError("the vllm backend needs a CUDA GPU; use --backend lmforge on this machine")
        from lmforge.tokenize.bpe import load_tokenizer
        from lmforge.tokenize.chat import chat_template_of, chat_tokens_of, tokenizer_config

        self._tmp = tempfile.TemporaryDirectory(prefix="lmforge-vllm-")
        model, tokenizer = Path(source[0]), source[1]
        hf, tok_dir = _hf_dir(model, Path(tokenizer) if tokenizer else None, Path(self._tmp.name))
        tok_dir = tok_dir or hf
        args = AsyncEngineArgs(model=str(hf), tokenizer=str(tok_dir), max_num_seqs=slots)
        self.engine = AsyncLLMEngine.from_engine_args(args)
        tok = load_tokenizer(tok_dir)
        self.max_len = int(self.engine.engine.model_config.max_model_len) if hasattr(self.engine, "engine") \
            else args.max_model_len or 2048
        config = tokenizer_config(Path(tok_dir))
        self.loaded = LoadedModel(model=None, tokenizer=tok, name=model.name, path=hf,
                                  chat_template=chat_template_of(config), chat_tokens=chat_tokens_of(config))
        self.running = self.waiting = 0

    def start(self) -> None:  # vLLM runs its own loop
        pass

    def stop(self) -> None:
        self._tmp.cleanup()

    def check_fits(self, prompt_tokens: int, params: SamplingParams) -> None:
        check_fits(prompt_tokens, params, self.max_len)

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       extra_stop_ids: list[int] | None = None) -> AsyncIterator[Event]:
        from vllm import SamplingParams as VParams
        from vllm.inputs import TokensPrompt

        vp = VParams(n=params.n, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or -1,
                     repetition_penalty=params.repetition_penalty, max_tokens=params.max_new_tokens,
                     stop=params.stop or None, seed=params.seed, ignore_eos=params.ignore_eos)
        sent = [0] * params.n
        done = [False] * params.n
        self.running += 1
        try:
            async for out in self.engine.generate(TokensPrompt(prompt_token_ids=prompt_ids), vp, uuid.uuid4().hex):
                for c in out.outputs:
                    if done[c.index]:
                        continue
                    delta = c.text[sent[c.index]:]
                    sent[c.index] = len(c.text)
                    reason = None if c.finish_reason is None else ("length" if c.finish_reason == "length" else "stop")
                    done[c.index] = reason is not None
                    yield Event(c.index, delta, list(c.token_ids[-1:]), reason)
        finally:
            self.running -= 1
