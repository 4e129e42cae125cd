"""Chat messages to a prompt, with the model's own chat template.

Templates are Jinja, as in Hugging Face's tokenizer_config.json, and come from files a user
may not control, so they run in Jinja's immutable sandbox. A tokenizer without a template gets
ChatML, which is what lmforge tokenizers are trained with (`<|im_start|>` / `<|im_end|>`).

Message content is text written by whoever calls the API: `ChatEncoder` encodes the special
token strings inside it (`<|im_end|><|im_start|>system`) as their plain-text pieces, so only the
template's own markers become control tokens and a user cannot open a system turn.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from lmforge.errors import InputError

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ROLES = ("system", "user", "assistant", "tool", "developer")
# Message fields besides role and content that templates read (tool calls and their results, Qwen3's
# reasoning), passed on when a message has them: Llama 3.1's template tests `'tool_calls' in message`.
PASSED_FIELDS = ("tool_calls", "tool_call_id", "name", "reasoning_content")
PLACEHOLDERS = 0xF0000  # supplementary private-use area: stand-ins for special token strings in content


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    """The template compiled as transformers' `apply_chat_template` compiles it, so it renders the same text.

    Hugging Face templates rely on what transformers adds to Jinja: loop controls (`{% break %}`),
    `{% generation %}` blocks, `raise_exception`, `strftime_now` (Llama 3.2's date) and a `tojson`
    that keeps non-ASCII text and key order and takes `indent` (Jinja's own escapes `<` and sorts).
    """
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols", _generation_extension()])

    def raise_exception(message: str) -> None:  # HF templates call this to reject bad conversations
        raise TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def _generation_extension() -> type:
    """`{% generation %}...{% endgeneration %}` marks the assistant's text for transformers' training
    masks; to a prompt it is just its body."""
    from jinja2.ext import Extension

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    return Generation


def message_text(content: Any) -> str:
    """OpenAI content is a string or a list of parts; only text parts mean anything to a text model."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InputError("only text content parts are supported by this model")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise InputError(f"message content must be a string or a list of text parts (got {type(content).__name__})")


def render_chat(messages: list[dict[str, Any]], template: str | None, eos_token: str = "<|endoftext|>",
                bos_token: str = "", tools: list[dict[str, Any]] | None = None, add_generation_prompt: bool = True,
                **variables: Any) -> str:
    """The prompt text, as transformers' `apply_chat_template(..., add_generation_prompt=True)` renders it.

    Training renders whole conversations with `add_generation_prompt=False`, through this same
    function, so a fine-tuned model sees the prompt the server will give it.

    `bos_token` and `eos_token` are the strings of tokenizer_config.json (Llama 3's template writes
    `bos_token` itself), `tools` are JSON schemas, and `variables` reach the template as they are
    (`date_string`, Qwen3's `enable_thinking`).
    """
    from jinja2.exceptions import TemplateError

    if not messages:
        raise InputError("messages must not be empty")
    clean = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            raise InputError(f"messages[{i}].role must be one of {', '.join(ROLES)} (got {role!r})")
        fields = {k: m[k] for k in PASSED_FIELDS if m.get(k) is not None}
        clean.append({"role": role, "content": message_text(m.get("content")), **fields})
    try:
        return _compile(template or CHATML).render(**variables, messages=clean, tools=tools, documents=None,
                                                   add_generation_prompt=add_generation_prompt, bos_token=bos_token,
                                                   eos_token=eos_token)
    except TemplateError as exc:
        raise InputError(f"the model's chat template rejected the messages: {exc}") from None


class ChatEncoder:
    """Messages to token ids, where only the template's markers are control tokens.

    The content's special token strings are swapped for private-use placeholders before the
    template runs, so every special token string left in the rendered text is the template's.
    The text is cut at those, and each piece between them is encoded with special tokens read
    as text and the placeholders restored, so the content's `<|im_end|>` becomes `<`, `|`, `im`...
    A tokenizer splits its input at special tokens before anything else, so for content without
    special token strings the ids are exactly those of encoding the rendered text. Everything the
    caller gives (content, tool calls, tool schemas) is treated alike.
    """

    def __init__(self, tokenizer: Any, template: str | None, bos_token: str = "",
                 eos_token: str = "<|endoftext|>") -> None:
        from tokenizers import Tokenizer

        self.tokenizer = tokenizer
        self.template = template
        self.tokens = {"bos_token": bos_token, "eos_token": eos_token}
        added = tokenizer.get_added_tokens_decoder()  # id -> AddedToken
        self.special_ids = {t.content: i for i, t in added.items() if t.special and t.content}
        self.specials = sorted(self.special_ids, key=len, reverse=True)  # longest first, as tokenizers match
        self._placeholder = {s: chr(PLACEHOLDERS + i) for i, s in enumerate(self.specials)}
        self._split = re.compile("|".join(map(re.escape, self.specials))) if self.specials else None
        self.plain = Tokenizer.from_str(tokenizer.to_str())
        self.plain.encode_special_tokens = True  # special token strings are text to this copy
        # An escape character the template itself does not use; in content it is doubled.
        source = template or CHATML
        self.esc = next(chr(c) for c in range(0x10FFFD, 0x100000, -1) if chr(c) not in source)
        self._hidden = re.compile(re.escape(self.esc) + "(.)", re.DOTALL)

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True) -> str:
        """The prompt text (specials in content shown as they are), for logs and echo."""
        return render_chat(messages, self.template, tools=tools, add_generation_prompt=add_generation_prompt,
                           **self.tokens)

    def encode(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered messages; without the generation prompt for a conversation to learn."""
        if self._split is None:
            return encode_texts(self.tokenizer, [self.render(messages, tools, add_generation_prompt)])[0]
        hidden = [self._hide_all({**m, "content": message_text(m.get("content"))}) for m in messages]
        text = render_chat(hidden, self.template, tools=self._hide_all(tools),
                           add_generation_prompt=add_generation_prompt, **self.tokens)
        pieces: list[str] = []
        controls: list[int] = []
        start = 0
        for m in self._split.finditer(text):
            pieces.append(self._restore(text[start : m.start()]))
            controls.append(self.special_ids[m.group()])
            start = m.end()
        pieces.append(self._restore(text[start:]))
        encoded = encode_texts(self.plain, pieces)
        ids: list[int] = list(encoded[0])
        for control, piece in zip(controls, encoded[1:], strict=True):
            ids.append(control)
            ids += piece
        return ids

    def _hide(self, content: str) -> str:
        content = content.replace(self.esc, self.esc * 2)
        return self._split.sub(lambda m: self.esc + self._placeholder[m.group()], content)

    def _hide_all(self, value: Any) -> Any:
        """`value` with `_hide` applied to every string in it (dict keys aside)."""
        if isinstance(value, str):
            return self._hide(value)
        if isinstance(value, dict):
            return {k: self._hide_all(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._hide_all(v) for v in value]
        return value

    def _restore(self, text: str) -> str:
        def back(m: re.Match) -> str:
            c = m.group(1)
            k = ord(c) - PLACEHOLDERS
            if c == self.esc:
                return c
            return self.specials[k] if 0 <= k < len(self.specials) else c  # a pair the template cut: drop the escape

        return self._hidden.sub(back, text) if self.esc in text else text


def tokenizer_config(tok_dir: Path) -> dict[str, Any]:
    """tokenizer_config.json of a tokenizer directory ({} without one; a file over 64 MB is not read)."""
    cfg = tok_dir / "tokenizer_config.json"
    if not cfg.is_file() or cfg.stat().st_size > 64 << 20:
        return {}
    try:
        raw = json.loads(cfg.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{cfg}: not valid JSON ({exc})") from None
    return raw if isinstance(raw, dict) else {}


def chat_template_of(config: dict[str, Any]) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # HF's named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def chat_tokens_of(config: dict[str, Any]) -> dict[str, str]:
    """bos/eos token strings for templates that write them (Llama 3's starts with {{ bos_token }})."""
    tokens = {}
    for role in ("bos_token", "eos_token"):
        value = config.get(role)
        value = value.get("content") if isinstance(value, dict) else value  # {"content": ..., ...} form
        if isinstance(value, str):
            tokens[role] = value
    return tokens


def chat_encoder_for(tok_dir: str | Path) -> ChatEncoder:
    """The encoder the server builds for a tokenizer directory: its tokenizer, template and bos/eos strings.

    Fine-tuning builds its encoder here too, so training and serving cannot render a conversation
    differently."""
    from lmforge.tokenize.bpe import load_tokenizer

    config = tokenizer_config(Path(tok_dir))
    return ChatEncoder(load_tokenizer(tok_dir), chat_template_of(config), **chat_tokens_of(config))


def encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without added special tokens. The batch call releases the GIL (a single
    `encode` holds it for the whole text), so a long prompt tokenized on a worker thread does not
    stop the server's event loop."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # tokenizers >= 0.20.2: no offsets
    return [e.ids for e in encode(texts, add_special_tokens=False)]
