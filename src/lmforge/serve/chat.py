"""Chat messages to a prompt, with the model's own chat template.

Templates are Jinja, as in Hugging Face's tokenizer_config.json, and come from files a user
may not control, so they run in Jinja's immutable sandbox. A tokenizer without a template gets
ChatML, which is what lmforge tokenizers are trained with (`<|im_start|>` / `<|im_end|>`).

Message content is text written by whoever calls the API: `ChatEncoder` encodes the special
token strings inside it (`<|im_end|><|im_start|>system`) as their plain-text pieces, so only the
template's own markers become control tokens and a user cannot open a system turn.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from lmforge.errors import InputError

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ROLES = ("system", "user", "assistant", "tool", "developer")
PLACEHOLDERS = 0xF0000  # supplementary private-use area: stand-ins for special token strings in content


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:  # HF templates call this to reject bad conversations
        raise TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


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


def render_chat(messages: list[dict[str, Any]], template: str | None, eos_token: str = "<|endoftext|>") -> str:
    from jinja2.exceptions import TemplateError

    if not messages:
        raise InputError("messages must not be empty")
    clean = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            raise InputError(f"messages[{i}].role must be one of {', '.join(ROLES)} (got {role!r})")
        clean.append({"role": role, "content": message_text(m.get("content"))})
    try:
        return _compile(template or CHATML).render(messages=clean, add_generation_prompt=True,
                                                   bos_token="", eos_token=eos_token)
    except TemplateError as exc:
        raise InputError(f"the model's chat template rejected the messages: {exc}") from None


class ChatEncoder:
    """Messages to token ids, where only the template's markers are control tokens.

    The content's special token strings are swapped for private-use placeholders before the
    template runs, so every special token string left in the rendered text is the template's.
    The text is cut at those, and each piece between them is encoded with special tokens read
    as text and the placeholders restored, so the content's `<|im_end|>` becomes `<`, `|`, `im`...
    A tokenizer splits its input at special tokens before anything else, so for content without
    special token strings the ids are exactly those of encoding the rendered text.
    """

    def __init__(self, tokenizer: Any, template: str | None) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = tokenizer
        self.template = template
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

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text (specials in content shown as they are), for logs and echo."""
        return render_chat(messages, self.template)

    def encode(self, messages: list[dict[str, Any]]) -> list[int]:
        if self._split is None:
            return encode_texts(self.tokenizer, [self.render(messages)])[0]
        hidden = [{**m, "content": self._hide(message_text(m.get("content")))} for m in messages]
        text = render_chat(hidden, self.template)
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

    def _restore(self, text: str) -> str:
        def back(m: re.Match) -> str:
            c = m.group(1)
            k = ord(c) - PLACEHOLDERS
            if c == self.esc:
                return c
            return self.specials[k] if 0 <= k < len(self.specials) else c  # a pair the template cut: drop the escape

        return self._hidden.sub(back, text) if self.esc in text else text


def encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without added special tokens. The batch call releases the GIL (a single
    `encode` holds it for the whole text), so a long prompt tokenized on a worker thread does not
    stop the server's event loop."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # tokenizers >= 0.20.2: no offsets
    return [e.ids for e in encode(texts, add_special_tokens=False)]
