"""Readers for chat data: conversations (chat fine-tuning) and preference pairs (DPO), from JSON lines.

The field names are the ones public chat datasets use, so their files load as they are:

- a conversation is `messages: [{role, content}]` (OpenAI style) or `conversations: [{from,
  value}]` (ShareGPT, whose roles human/gpt are mapped to user/assistant, and whose optional
  top-level `system` becomes the first turn);
- a preference pair is `prompt`, `chosen`, `rejected`. The prompt is a string or a list of
  messages; chosen and rejected are strings, or conversations that end with the assistant's
  answer (as in UltraFeedback-binarized), whose earlier turns are the prompt when `prompt` is absent.

As with the other loaders, a bad line raises an `InputError` naming the file and line, or with
`on_error="skip"` is skipped and counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from lmforge.tasks.examples import ConversationExample, PreferenceExample, Turn, check_turns
from lmforge.tasks.loaders import jsonl_examples
from lmforge.tasks.spans import RowError

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
                  "system": "system", "tool": "tool", "function": "tool", "observation": "tool"}


def turns_from(value: Any) -> tuple[Turn, ...]:
    """Turns from OpenAI-style {role, content} or ShareGPT-style {from, value} objects."""
    if not isinstance(value, list) or not value:
        raise RowError("a conversation must be a non-empty list of {role, content} or {from, value} objects")
    turns = []
    for i, t in enumerate(value):
        if not isinstance(t, Mapping):
            raise RowError(f"turn {i} is not an object (got {type(t).__name__})")
        if "from" in t and "role" not in t:
            who = str(t.get("from", "")).lower()
            if who not in SHAREGPT_ROLES:
                raise RowError(f"turn {i}: speaker {t.get('from')!r} is not one of {', '.join(SHAREGPT_ROLES)}")
            turns.append(Turn(role=SHAREGPT_ROLES[who], content=t.get("value")))
        else:
            turns.append(Turn(role=t.get("role"), content=t.get("content")))
    return tuple(turns)


def conversation_from_row(row: Mapping[str, Any], messages_field: str | None = None) -> ConversationExample:
    """The conversation of one row: `messages_field`, else `messages`, else `conversations` (ShareGPT)."""
    names = [messages_field] if messages_field else ["messages", "conversations"]
    name = next((n for n in names if n in row), None)
    if name is None:
        raise RowError(f"no field {' or '.join(map(repr, names))} (fields: {', '.join(map(str, row)) or 'none'})")
    turns = turns_from(row[name])
    system = row.get("system")
    if isinstance(system, str) and system.strip() and turns[0].role != "system":
        turns = (Turn("system", system), *turns)
    return ConversationExample(messages=turns)


def _answer(value: Any, name: str) -> tuple[str, tuple[Turn, ...] | None]:
    """(answer, the turns before it or None) of a chosen/rejected field."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, list):
        turns = turns_from(value)
        if turns[-1].role != "assistant":
            raise RowError(f"{name} is a conversation that does not end with an assistant turn")
        return turns[-1].content, turns[:-1]
    raise RowError(f"{name} must be a string or a list of messages (got {type(value).__name__})")


def preference_from_row(row: Mapping[str, Any], prompt_field: str = "prompt", chosen_field: str = "chosen",
                        rejected_field: str = "rejected") -> PreferenceExample:
    """The preference pair of one row (see the module docstring for the shapes read)."""
    for name in (chosen_field, rejected_field):
        if row.get(name) in (None, "", []):
            raise RowError(f"no field {name!r} (fields: {', '.join(map(str, row)) or 'none'})")
    chosen, chosen_context = _answer(row[chosen_field], chosen_field)
    rejected, rejected_context = _answer(row[rejected_field], rejected_field)
    prompt: Any = row.get(prompt_field)
    if prompt in (None, "", []):
        if not chosen_context:
            raise RowError(f"no field {prompt_field!r}, and {chosen_field} is not a conversation holding it")
        if rejected_context is not None and rejected_context != chosen_context:
            raise RowError(f"{chosen_field} and {rejected_field} answer different conversations")
        prompt = chosen_context
    elif isinstance(prompt, list):
        prompt = check_turns(turns_from(prompt), need_assistant=False)
    elif not isinstance(prompt, str):
        raise RowError(f"{prompt_field} must be a string or a list of messages (got {type(prompt).__name__})")
    return PreferenceExample(prompt=prompt, chosen=chosen, rejected=rejected)


def load_conversations(path: str | Path, *, messages_field: str | None = None,
                       on_error: Literal["raise", "skip"] = "raise") -> list[ConversationExample]:
    """Conversations from JSON lines (optionally .gz); meta gets where, and id and split when a row has them."""
    return jsonl_examples(Path(path), lambda row: conversation_from_row(row, messages_field), on_error)  # type: ignore[return-value]


def load_preferences(path: str | Path, *, prompt_field: str = "prompt", chosen_field: str = "chosen",
                     rejected_field: str = "rejected", on_error: Literal["raise", "skip"] = "raise"
                     ) -> list[PreferenceExample]:
    """Preference pairs from JSON lines (optionally .gz); meta gets where, and id and split when a row has them."""
    return jsonl_examples(Path(path), lambda row: preference_from_row(row, prompt_field, chosen_field,  # type: ignore[return-value]
                                                                      rejected_field), on_error)
