"""Readers for chat data: conversations (chat fine-tuning) and preference pairs (DPO), from JSON lines.

The field names are the ones public chat datasets use, so their files load as they are:

- a conversation is `messages: [{role, content}]` (OpenAI style) or `conversations: [{from,
  value}]` (ShareGPT, whose roles human/gpt are mapped to user/assistant, and whose optional
  top-level `system` becomes the first turn);
- a preference pair is `prompt`, `chosen`, `rejected`. The prompt is a string or a list of
  messages; chosen and rejected are strings, or conversations that end with the assistant's
  answer (as in UltraFeedback-binarized), whose earlier turns are the prompt when `prompt` is absent.

Also read: Alpaca rows (`instruction`, optional `input`, `output`, optional `system` and `history`
of [question, answer] pairs) as conversations, and UltraFeedback-style scored completions
(`completions: [{response | text, overall_score | score}]`) as the pair best vs worst.

These functions parse one row; `tasks.loaders` reads the files (JSONL, CSV, Parquet, `datasets`
directories, lmforge records), where a bad row raises an `InputError` naming the file and line,
or with `on_error="skip"` is skipped and counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lmforge.tasks.examples import ConversationExample, PreferenceExample, Turn, check_turns
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


def alpaca_from_row(row: Mapping[str, Any]) -> ConversationExample:
    """An Alpaca row as a conversation: the system prompt, the history's turns, then instruction (+ input)."""
    instruction, given, output = row.get("instruction"), row.get("input") or "", row.get("output")
    for name, value in (("instruction", instruction), ("output", output)):
        if not isinstance(value, str) or not value.strip():
            raise RowError(f"alpaca field {name!r} must be a non-empty string")
    if not isinstance(given, str):
        raise RowError("alpaca field 'input' must be a string")
    turns: list[Turn] = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        turns.append(Turn("system", system))
    history = row.get("history") or []
    if not isinstance(history, list):
        raise RowError("alpaca field 'history' must be a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowError(f"alpaca history[{i}] is not a [question, answer] pair of strings")
        turns += [Turn("user", pair[0]), Turn("assistant", pair[1])]
    prompt = f"{instruction}\n\n{given}" if given.strip() else instruction
    return ConversationExample(messages=(*turns, Turn("user", prompt), Turn("assistant", output)))


def chat_from_row(row: Mapping[str, Any], messages_field: str | None = None, prompt_field: str = "prompt",
                  response_field: str = "response") -> ConversationExample:
    """A conversation from any of the layouts read: messages / ShareGPT, Alpaca, or a prompt and response."""
    if messages_field or "messages" in row or "conversations" in row:
        return conversation_from_row(row, messages_field)
    if "instruction" in row and "output" in row:
        return alpaca_from_row(row)
    prompt, response = row.get(prompt_field), row.get(response_field)
    if isinstance(prompt, str) and isinstance(response, str) and prompt.strip() and response.strip():
        return ConversationExample(messages=(Turn("user", prompt), Turn("assistant", response)))
    raise RowError(f"no conversation: expected messages, conversations (ShareGPT), instruction/output (Alpaca) or "
                   f"{prompt_field}/{response_field} (fields: {', '.join(map(str, row)) or 'none'})")


def _score(completion: Mapping[str, Any]) -> float:
    for key in ("overall_score", "score", "rating"):
        value = completion.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    raise RowError("a completion has no numeric overall_score, score or rating")


def scored_from_row(row: Mapping[str, Any], prompt_field: str = "prompt") -> PreferenceExample:
    """UltraFeedback-style scored completions as one pair: the best-scored answer over the worst."""
    prompt = row.get(prompt_field) if prompt_field in row else row.get("instruction")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RowError(f"no prompt: field {prompt_field!r} or 'instruction' must be a non-empty string")
    completions = row.get("completions")
    if not isinstance(completions, list) or len(completions) < 2:
        raise RowError("completions must be a list of at least two scored answers")
    scored = []
    for i, c in enumerate(completions):
        text = c.get("response", c.get("text")) if isinstance(c, Mapping) else None
        if not isinstance(text, str) or not text.strip():
            raise RowError(f"completion {i} has no response text")
        scored.append((_score(c), i, text))
    best, worst = max(scored), min(scored)
    if best[0] == worst[0]:
        raise RowError("every completion has the same score: the row prefers nothing")
    return PreferenceExample(prompt=prompt, chosen=best[2], rejected=worst[2],
                             meta={"scores": [best[0], worst[0]]})


def any_preference_from_row(row: Mapping[str, Any], prompt_field: str = "prompt", chosen_field: str = "chosen",
                            rejected_field: str = "rejected") -> PreferenceExample:
    """A pair from prompt/chosen/rejected, or from scored completions when the row has them."""
    if "completions" in row and chosen_field not in row:
        return scored_from_row(row, prompt_field)
    return preference_from_row(row, prompt_field, chosen_field, rejected_field)


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
