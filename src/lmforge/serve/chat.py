"""Chat messages to a prompt, with the model's own chat template.

Templates are Jinja, as in Hugging Face's tokenizer_config.json, and come from files a user
may not control, so they run in Jinja's immutable sandbox. A tokenizer without a template gets
ChatML, which is what lmforge tokenizers are trained with (`<|im_start|>` / `<|im_end|>`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from lmforge.errors import InputError

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ROLES = ("system", "user", "assistant", "tool", "developer")


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
