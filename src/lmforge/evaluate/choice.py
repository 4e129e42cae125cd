"""Multiple-choice evaluation (C-Eval, CMMLU, MMLU and their like): accuracy per subject and overall.

Prompts follow the benchmarks' own papers. An English subject (MMLU) starts "The following are multiple
choice questions (with answers) about {subject}." and ends each question with "Answer:"; a Chinese one
(C-Eval, CMMLU) starts "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。" and ends with "答案：".
Then come k solved examples (the subject's dev split, in file order; without one, k other questions of
the same subject drawn with a fixed seed) and the question with its options "A. ...".

Two scorings:
- `letter` (default): log P(answer letter | prompt), " A" after "Answer:" and "A" after "答案：", as in
  the solved examples. When each letter is one token (the usual case), all letters are read from one
  forward pass per question; otherwise each letter is scored as a continuation.
- `text`: the cloze form for models too small to use letters: the prompt shows the question without
  its options, and each option's full text is scored as the continuation (all options batched). The
  sum of its token log-probabilities picks `accuracy`; the sum divided by the option's characters
  picks `accuracy_norm`, which does not favour short options. Both are reported.

A prompt longer than the model's context loses its earliest solved examples first, then tokens from
its left (after the BOS or <|endoftext|> it starts with); the report counts both (`shots_dropped`,
`truncated`).

Accuracy is reported overall (micro: correct / questions), as the mean over subjects (macro), per
language and per subject; each question's scores and prediction can be written as JSON lines.
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmforge import progress
from lmforge.errors import ConfigError, InputError
from lmforge.evaluate.choice_data import LETTERS, ChoiceSet, Question, load_choice
from lmforge.evaluate.loglik import Encoder, Scorer, load_lm, split_continuations

log = logging.getLogger(__name__)

Scoring = Literal["letter", "text"]
HEADER = {"en": "The following are multiple choice questions (with answers) about {subject}.\n\n",
          "zh": "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n"}
CUE = {"en": "Answer:", "zh": "答案："}
GAP = {"en": " ", "zh": ""}  # between the cue and the answer
MAX_SHOTS = 25


def format_question(q: Question, lang: str, options: bool = True) -> str:
    lines = [q.question, *(f"{LETTERS[i]}. {o}" for i, o in enumerate(q.options))] if options else [q.question]
    return "\n".join([*lines, CUE[lang]])


def answer_text(q: Question, index: int, lang: str, scoring: Scoring) -> str:
    """What follows the cue for option `index`: its letter, or its text in the cloze form."""
    return GAP[lang] + (LETTERS[index] if scoring == "letter" else q.options[index])


def build_prompt(q: Question, examples: list[Question], name: str, lang: str, scoring: Scoring) -> str:
    """The subject's header, the solved examples and the question, ending at the answer cue."""
    options = scoring == "letter"
    shots = "".join(format_question(e, lang, options) + answer_text(e, e.answer, lang, scoring) + "\n\n"
                    for e in examples)
    return HEADER[lang].format(subject=name) + shots + format_question(q, lang, options)


def examples_for(q: Question, index: int, data: ChoiceSet, by_subject: dict[str, list[int]], shots: int,
                 seed: int) -> list[Question]:
    """The first `shots` dev examples of the subject, else `shots` of its other questions, drawn per question."""
    if shots == 0:
        return []
    dev = data.dev.get(q.subject)
    if dev:
        return dev[:shots]
    others = [i for i in by_subject[q.subject] if i != index]
    rng = random.Random(f"{seed}:{q.subject}:{index}")  # str seeds hash with SHA-512: the same in every process
    return [data.questions[i] for i in rng.sample(others, min(shots, len(others)))]


@dataclass
class Item:
    """One question's token ids: the context and each option's continuation."""

    question: Question
    context: list[int]
    continuations: list[list[int]]
    shots: int
    truncated: bool


def fit(q: Question, examples: list[Question], name: str, lang: str, scoring: Scoring, encoder: Encoder,
        max_len: int | None) -> tuple[Item, int]:
    """The question's item within `max_len` tokens, and how many solved examples had to be dropped."""
    kept = list(examples)
    while True:
        prompt = build_prompt(q, kept, name, lang, scoring)
        ctx, conts = split_continuations(encoder, prompt, [answer_text(q, i, lang, scoring)
                                                           for i in range(len(q.options))])
        ctx = encoder.prefix + ctx
        longest = max(len(c) for c in conts)
        need = len(ctx) + max(longest - 1, 0)  # the last continuation token is predicted, never read
        if max_len is None or need <= max_len or not kept:
            break
        kept.pop(0)  # the earliest example is the farthest from the question
    truncated = max_len is not None and need > max_len
    if truncated:  # cut after the BOS / <|endoftext|> the sequence starts with
        lead = len(encoder.prefix)
        keep = max_len - max(longest - 1, 0) - lead
        if keep < 1:
            raise InputError(f"{q.where}: an option of {longest} tokens does not fit the model's context of "
                             f"{max_len} tokens")
        ctx = ctx[:lead] + ctx[len(ctx) - keep :]
    return Item(q, ctx, conts, len(kept), truncated), len(examples) - len(kept)


def _items(data: ChoiceSet, scoring: Scoring, shots: int, seed: int, encoder: Encoder,
           max_len: int | None) -> tuple[list[Item], int]:
    by_subject: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(data.questions):
        by_subject[q.subject].append(i)
    items, dropped = [], 0
    for i, q in enumerate(data.questions):
        examples = examples_for(q, i, data, by_subject, shots, seed)
        item, n = fit(q, examples, data.names[q.subject], data.langs[q.subject], scoring, encoder, max_len)
        items.append(item)
        dropped += n
    return items, dropped


def score_items(items: list[Item], scorer: Scorer) -> list[list[float]]:
    """Each option's summed log-probability: letters in one pass per question when each is one token."""
    single = [i for i, it in enumerate(items) if all(len(c) == 1 for c in it.continuations)]
    chosen = set(single)
    multi = [i for i in range(len(items)) if i not in chosen]
    requests = [(items[i].context, c) for i in multi for c in items[i].continuations]
    out: list[list[float]] = [[] for _ in items]
    with progress.task("multiple choice: scoring", total=len(single) + len(requests)) as bar:
        if single:
            got = scorer.next_token([items[i].context for i in single],
                                    [[c[0] for c in items[i].continuations] for i in single], bar.advance)
            for i, scores in zip(single, got, strict=True):
                out[i] = scores
        if requests:
            got = scorer.continuations(requests, bar.advance)
            start = 0
            for i in multi:
                n = len(items[i].continuations)
                out[i] = [sum(t) if t else float("-inf") for t in got[start : start + n]]  # an empty option never wins
                start += n
    return out


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def prediction_rows(items: list[Item], scores: list[list[float]], scoring: Scoring) -> list[dict[str, Any]]:
    rows = []
    for item, sums in zip(items, scores, strict=True):
        q = item.question
        pred = _argmax(sums)
        row: dict[str, Any] = {"subject": q.subject, "where": q.where, "answer": LETTERS[q.answer],
                               "predicted": LETTERS[pred], "correct": pred == q.answer,
                               "scores": [round(s, 6) for s in sums]}
        if scoring == "text":
            norm = [s / max(len(o), 1) for s, o in zip(sums, q.options, strict=True)]
            pred_norm = _argmax(norm)
            row.update({"predicted_norm": LETTERS[pred_norm], "correct_norm": pred_norm == q.answer,
                        "scores_norm": [round(s, 6) for s in norm]})
        row.update({"shots": item.shots, "truncated": item.truncated})
        rows.append(row)
    return rows


def _accuracy(rows: list[dict[str, Any]], key: str) -> float:
    return sum(bool(r[key]) for r in rows) / len(rows)


def summarise(rows: list[dict[str, Any]], data: ChoiceSet, scoring: Scoring) -> dict[str, Any]:
    """Overall (micro and macro), per-language and per-subject accuracy of the prediction rows."""
    keys = ["correct"] + (["correct_norm"] if scoring == "text" else [])
    by_subject: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_subject[r["subject"]].append(r)
    subjects: dict[str, dict[str, Any]] = {}
    for s in sorted(by_subject):
        group = by_subject[s]
        entry: dict[str, Any] = {"name": data.names[s], "language": data.langs[s], "questions": len(group)}
        for k in keys:
            entry[k] = sum(bool(r[k]) for r in group)
            entry[k.replace("correct", "accuracy")] = _accuracy(group, k)
        subjects[s] = entry
    out: dict[str, Any] = {"questions": len(rows), "subject_count": len(subjects)}
    for k in keys:
        acc = k.replace("correct", "accuracy")
        out[k] = sum(bool(r[k]) for r in rows)
        out[acc] = _accuracy(rows, k)
        out[f"{acc}_macro"] = sum(e[acc] for e in subjects.values()) / len(subjects)
    languages: dict[str, dict[str, Any]] = {}
    for lang in sorted({e["language"] for e in subjects.values()}):
        mine = [s for s, e in subjects.items() if e["language"] == lang]
        group = [r for s in mine for r in by_subject[s]]
        entry = {"subjects": len(mine), "questions": len(group)}
        for k in keys:
            acc = k.replace("correct", "accuracy")
            entry[acc] = _accuracy(group, k)
            entry[f"{acc}_macro"] = sum(subjects[s][acc] for s in mine) / len(mine)
        languages[lang] = entry
    out["languages"] = languages
    out["subjects"] = subjects
    return out


def write_predictions(path: str | Path, rows: list[dict[str, Any]]) -> None:
    from lmforge.records import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def check_options(shots: int, scoring: str, batch_size: int) -> None:
    if scoring not in ("letter", "text"):
        raise ConfigError(f"choice scoring must be letter or text (got {scoring!r})")
    if not 0 <= shots <= MAX_SHOTS:
        raise ConfigError(f"shots must be 0 to {MAX_SHOTS} (got {shots})")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer (got {batch_size})")


def run_choice(model: Any, tokenizer: Any, data: ChoiceSet, *, shots: int = 0, scoring: Scoring = "letter",
               batch_size: int = 8, seed: int = 0, max_len: int | None = None,
               predictions: str | Path | None = None) -> dict[str, Any]:
    """Accuracy of a loaded causal LM (lmforge GPT or transformers) with its tokenizer on `data`."""
    check_options(shots, scoring, batch_size)
    scorer = Scorer(model, batch_size, max_len)
    encoder = Encoder(tokenizer)
    items, dropped = _items(data, scoring, shots, seed, encoder, scorer.max_len)
    scores = score_items(items, scorer)
    rows = prediction_rows(items, scores, scoring)
    if predictions is not None:
        write_predictions(predictions, rows)
    result = {"metric": "choice", "scoring": scoring, "shots": shots, **summarise(rows, data, scoring)}
    languages, subjects = result.pop("languages"), result.pop("subjects")
    result.update({"shots_used_mean": sum(it.shots for it in items) / len(items), "shots_dropped": dropped,
                   "truncated": sum(it.truncated for it in items),
                   "context_tokens_max": max(len(it.context) for it in items),
                   "files": data.files, "skipped_rows": data.skipped, "languages": languages, "subjects": subjects})
    if dropped or result["truncated"]:
        log.warning("prompts longer than the model's context (%s tokens): %d solved examples dropped, %d prompts "
                    "cut from the left", scorer.max_len, dropped, result["truncated"])
    return result


def evaluate_choice(model: str | Path, data: str | Path, *, tokenizer: str | Path | None = None, shots: int = 0,
                    scoring: Scoring = "letter", device: str = "auto", batch_size: int = 8, seed: int = 0,
                    on_error: Literal["raise", "skip"] = "raise",
                    predictions: str | Path | None = None) -> dict[str, Any]:
    """What `lmforge evaluate MODEL DATA --metrics choice` does: load the data, then the model, and score."""
    check_options(shots, scoring, batch_size)
    questions = load_choice(data, on_error)  # a bad file fails before a model is loaded
    lm, tok = load_lm(model, tokenizer, device)
    return run_choice(lm, tok, questions, shots=shots, scoring=scoring, batch_size=batch_size, seed=seed,
                      predictions=predictions)
