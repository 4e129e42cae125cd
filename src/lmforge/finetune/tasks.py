"""Fine-tuning tasks as the trainer sees them: encoded examples, batch sources, objectives, evaluators.

Every task encodes its examples once with a `transformers` tokenizer (lmforge's tokenizer
directories load as one, and so does any Hugging Face model directory), then serves micro-batches
by index like the pretraining sources do: a per-epoch permutation seeded by (seed, epoch), so a
resumed run and a data-parallel rank fetch exactly the rows they should.

- classification: [CLS]/text/[SEP] (BERT tokenizers) or text + EOS (GPT tokenizers), one label each;
- ner: pre-split tokens (characters for Chinese; each in a form the tokenizer knows), the tag on each
  word's first piece, IGNORE elsewhere; with a CRF head the loss and the decoding see whole sentences;
- instruction: the chat template around prompt and response; loss only on the response tokens.
"""

from __future__ import annotations

import logging
import math
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.errors import UserError
from lmforge.models.crf import LinearChainCRF, bio_decode, gather_words
from lmforge.tasks.examples import Example
from lmforge.train.objectives import IGNORE, Batch

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """Token ids per example plus, per kind, a label index or per-token label ids."""

    ids: list[np.ndarray]
    labels: list[Any]  # int (classification) or np.ndarray of per-token ids (ner, instruction)
    pad_id: int

    def __len__(self) -> int:
        return len(self.ids)


def pad_id_of(tokenizer) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if token_id is not None:
            return int(token_id)
    return 0


def encode_classification(examples: Sequence[Example], tokenizer, labels: list[str], max_len: int) -> Encoded:
    index = {label: i for i, label in enumerate(labels)}
    missing = sorted({e.label for e in examples} - set(index), key=str)
    if missing:
        raise UserError(f"labels {missing[:5]} are not among the task's labels {labels}")
    enc = tokenizer([e.text for e in examples], truncation=True, max_length=max_len)["input_ids"]
    eos = tokenizer.eos_token_id
    if tokenizer.cls_token_id is None and eos is not None:
        # A causal model reads the label off its last position: end every text with the same EOS.
        enc = [(ids[: max_len - 1] + [eos]) if ids[-1:] != [eos] else ids for ids in enc]
    return Encoded([np.asarray(ids, dtype=np.int64) for ids in enc], [index[e.label] for e in examples],
                   pad_id_of(tokenizer))


def known_forms(words: Sequence[str], tokenizer) -> dict[str, str]:
    """The words the tokenizer knows only in another form, mapped to that form.

    Pretraining text goes through NFKC (`clean.normalize`), so a WordPiece vocabulary learned from
    it holds 1 and A but not the full-width １ and Ａ that People's Daily writes: fed as they are,
    they were [UNK], 3.6% of the characters of the built-in NER task. Such a word is fed in its
    NFKC form when that one is known; a word that makes no piece at all (a lone space) becomes
    the unknown token, so that every word keeps a position and a tag.
    """
    unk, unk_text = tokenizer.unk_token_id, tokenizer.unk_token
    distinct = sorted(set(words))
    if unk is None or not distinct:
        return {}
    pieces = tokenizer(distinct, add_special_tokens=False)["input_ids"]
    forms = {w: unk_text for w, ids in zip(distinct, pieces, strict=True) if not ids}
    unknown = [w for w, ids in zip(distinct, pieces, strict=True) if unk in ids
               and unicodedata.normalize("NFKC", w) != w]
    folded = [unicodedata.normalize("NFKC", w) for w in unknown]
    for word, form, ids in zip(unknown, folded, tokenizer(folded, add_special_tokens=False)["input_ids"] if folded
                               else [], strict=True):
        if ids and unk not in ids:
            forms[word] = form
    return forms


def encode_ner(examples: Sequence[Example], tokenizer, labels: list[str], max_len: int) -> Encoded:
    """Each word's tag on its first piece (IGNORE on the others and on special tokens); words
    are fed in a form the tokenizer knows (`known_forms`), and words past `max_len` are cut."""
    index = {tag: i for i, tag in enumerate(labels)}
    forms = known_forms([w for e in examples for w in e.tokens], tokenizer)
    if forms:
        log.info("ner: %d distinct words fed in their NFKC form (or as unknown), e.g. %s", len(forms),
                 ", ".join(f"{w!r}->{f!r}" for w, f in list(forms.items())[:3]))
    batch = tokenizer([[forms.get(w, w) for w in e.tokens] for e in examples], is_split_into_words=True,
                      truncation=True, max_length=max_len)
    ids, tags, cut = [], [], 0
    for i, example in enumerate(examples):
        words = batch.word_ids(i)
        cut += (max((w for w in words if w is not None), default=-1) + 1) < len(example.tokens)
        row = np.full(len(words), IGNORE, dtype=np.int64)
        previous = None
        for pos, word in enumerate(words):
            if word is not None and word != previous:  # the first piece of each word carries its tag
                tag = example.tags[word]
                if tag not in index:
                    raise UserError(f"tag {tag!r} is not among the task's tags {labels}")
                row[pos] = index[tag]
            previous = word
        ids.append(np.asarray(batch["input_ids"][i], dtype=np.int64))
        tags.append(row)
    if cut:
        log.info("ner: %d of %d sentences are longer than seq_len %d pieces: their last words are not tagged",
                 cut, len(examples), max_len)
    return Encoded(ids, tags, pad_id_of(tokenizer))


def encode_instructions(examples: Sequence[Example], tokenizer, max_len: int) -> Encoded:
    """Prompt through the chat template with the generation prompt; the response (and end-of-turn) is learned."""
    if tokenizer.chat_template is None:
        raise UserError("instruction tuning needs a tokenizer with a chat template (lmforge tokenizers have ChatML)")
    def render(prompt: str, response: str | None) -> str:
        turns = [{"role": "user", "content": prompt}]
        if response is None:
            return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return tokenizer.apply_chat_template(turns + [{"role": "assistant", "content": response}], tokenize=False)

    overhead = len(tokenizer(render("", None), add_special_tokens=False)["input_ids"])
    ids, labels = [], []
    for e in examples:
        prompt, full = render(e.prompt, None), render(e.prompt, e.response)
        if not full.startswith(prompt):
            raise UserError("the chat template renders the prompt differently inside a conversation")
        r = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if len(p) + len(r) > max_len:
            # Shorten the prompt's text, never the answer: a cut answer would teach stopping mid-sentence.
            budget = max(1, max_len - len(r) - overhead - 2)
            content = tokenizer(e.prompt, add_special_tokens=False)["input_ids"][:budget]
            prompt = render(tokenizer.decode(content), None)
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        row = (p + r)[:max_len]
        ids.append(np.asarray(row, dtype=np.int64))
        labels.append(np.asarray(([IGNORE] * len(p) + r)[:max_len], dtype=np.int64))
    return Encoded(ids, labels, pad_id_of(tokenizer))


class ExampleSource:
    """Padded micro-batches of encoded examples by index (see the module docstring)."""

    def __init__(self, data: Encoded, batch_size: int, seed: int, shuffle: bool = True) -> None:
        if len(data) == 0:
            raise UserError("no examples to train or evaluate on")
        self.data, self.batch_size, self.seed, self.shuffle = data, batch_size, seed, shuffle
        self._cached: tuple[int | None, np.ndarray | None] = (None, None)

    @property
    def num_batches(self) -> int:
        """Batches in one pass (the last one may be short when not shuffling)."""
        return math.ceil(len(self.data) / self.batch_size)

    def rows(self, index: int) -> list[int]:
        n = len(self.data)
        if not self.shuffle:
            return list(range(index * self.batch_size, min(n, (index + 1) * self.batch_size)))
        out = []
        for k in range(index * self.batch_size, (index + 1) * self.batch_size):
            epoch, pos = divmod(k, n)
            out.append(int(self._order(epoch)[pos]))
        return out

    def _order(self, epoch: int) -> np.ndarray:
        """Each epoch's permutation, a function of (seed, epoch) only; the last one is kept."""
        if self._cached[0] != epoch:
            self._cached = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.data)))
        return self._cached[1]

    def micro_batch(self, index: int) -> Batch:
        rows = self.rows(index)
        if not rows:
            raise IndexError(f"batch {index} is past the end of {len(self.data)} examples")
        width = max(len(self.data.ids[r]) for r in rows)
        ids = np.full((len(rows), width), self.data.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        per_token = not isinstance(self.data.labels[rows[0]], (int, np.integer))
        labels = np.full((len(rows), width), IGNORE, dtype=np.int64) if per_token else np.zeros(len(rows), np.int64)
        for i, r in enumerate(rows):
            n = len(self.data.ids[r])
            ids[i, :n], mask[i, :n] = self.data.ids[r], 1
            if per_token:
                labels[i, :n] = self.data.labels[r]
            else:
                labels[i] = self.data.labels[r]
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                "labels": torch.from_numpy(labels)}


# --------------------------------------------------------------------------- objectives


def logits_of(output: Any) -> torch.Tensor:
    """Logits from an lmforge head (a tensor), an lmforge GPT ((logits, loss)) or an HF model (.logits)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.logits


class Classification:
    """Cross-entropy per example, optionally weighted per class (for imbalanced labels)."""

    terms = ("cls",)

    def __init__(self, class_weights: Sequence[float] | None = None) -> None:
        self.weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None

    def counts(self, batch: Batch) -> dict[str, int]:
        return {"cls": int(batch["labels"].numel())}

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        logits = logits_of(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))  # (B, L)
        weight = None if self.weights is None else self.weights.to(logits.device)
        return {"cls": F.cross_entropy(logits.float(), batch["labels"], weight=weight, reduction="sum")}


def crf_of(model: nn.Module) -> LinearChainCRF | None:
    """The tagger's CRF, looked up through any wrapper (LoRA, DDP); None for a plain token classifier."""
    if not isinstance(model, nn.Module):
        return None
    return next((m for m in model.modules() if isinstance(m, LinearChainCRF)), None)


def tag_nll(logits: torch.Tensor, labels: torch.Tensor, crf: LinearChainCRF | None) -> torch.Tensor:
    """Summed NLL of the gold tags of the labelled words: of each word's tag on its own, or, with a
    CRF, of each sentence's whole tag sequence."""
    if crf is None:
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    words = labels != IGNORE
    scores, mask = gather_words(logits, words)  # (B, W, L), (B, W)
    return crf.nll(scores, gather_words(labels, words)[0], mask)


def decode_tags(logits: torch.Tensor, labels: torch.Tensor, crf: LinearChainCRF | None,
                tags: Sequence[str] | None) -> list[list[int]]:
    """Each row's predicted tag per labelled word: the CRF's best sequence, else the best sequence
    under the BIO rules of `tags` (Viterbi over the log-probabilities), else each word's argmax."""
    words = labels != IGNORE
    scores, mask = gather_words(logits.float(), words)  # (B, W, L), (B, W)
    if crf is not None:
        best = crf.decode(scores, mask)
    elif tags is not None:
        best = bio_decode(scores.log_softmax(-1), mask, tags)
    else:
        best = scores.argmax(-1)
    return [row[:n].tolist() for row, n in zip(best.cpu(), mask.sum(1).tolist(), strict=True)]


class TokenClassification:
    """NLL of the labelled tokens' tags (each word's first piece): per word, or per sentence with a CRF."""

    terms = ("tag",)

    def counts(self, batch: Batch) -> dict[str, int]:
        return {"tag": int((batch["labels"] != IGNORE).sum())}

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        logits = logits_of(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))  # (B, T, L)
        return {"tag": tag_nll(logits, batch["labels"], crf_of(model))}


class ResponseLM:
    """Next-token loss on response tokens only; the prompt is context, not a target."""

    terms = ("lm",)

    def counts(self, batch: Batch) -> dict[str, int]:
        return {"lm": int((batch["labels"][:, 1:] != IGNORE).sum())}

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        logits = logits_of(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))  # (B, T, V)
        targets = batch["labels"][:, 1:]  # position t predicts token t + 1
        loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                               reduction="sum")
        return {"lm": loss}


# --------------------------------------------------------------------------- predictions and evaluators


@torch.no_grad()
def predict(model: nn.Module, source: ExampleSource, device: torch.device,
            tags: Sequence[str] | None = None) -> tuple[list, list, float]:
    """(gold, predicted) label indices over one ordered pass (per example, or per labelled token),
    and the mean NLL over the same labels, so one pass gives both loss and metrics. Tags are
    decoded as whole sequences (`decode_tags`; `tags` names them, for the BIO rules)."""
    was_training = model.training
    model.eval()
    crf = crf_of(model)
    gold, pred, nll, count = [], [], 0.0, 0
    for i in range(source.num_batches):
        batch = {k: v.to(device) for k, v in source.micro_batch(i).items()}
        logits = logits_of(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
        labels = batch["labels"]
        count += int((labels != IGNORE).sum())
        if labels.dim() == 1:
            nll += float(F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum"))
            gold += labels.tolist()
            pred += logits.argmax(-1).tolist()
        else:
            nll += float(tag_nll(logits, labels, crf))
            gold += [row[row != IGNORE].tolist() for row in labels.cpu()]
            pred += decode_tags(logits, labels, crf, tags)
    model.train(was_training)
    return gold, pred, nll / max(count, 1)


def classification_metrics(gold: list[int], pred: list[int], labels: list[str]) -> dict[str, float]:
    from lmforge.evaluate import classification_report

    report = classification_report([labels[g] for g in gold], [labels[p] for p in pred], labels=labels)
    return {"accuracy": report["accuracy"], "f1_macro": report["macro"]["f1"], "f1_micro": report["micro"]["f1"]}


def ner_metrics(gold: list[list[int]], pred: list[list[int]], labels: list[str]) -> dict[str, float]:
    from lmforge.evaluate import ner_report

    report = ner_report([[labels[t] for t in row] for row in gold], [[labels[t] for t in row] for row in pred])
    return {"f1": report["f1"], "precision": report["precision"], "recall": report["recall"],
            "token_accuracy": report["token_accuracy"]}


class TaskMetrics:
    """Validation loss and task metrics in one pass over the validation examples (a `ValidationMetrics`).

    The loss is unweighted even when training weights classes: it estimates the plain validation NLL.
    """

    includes_loss = True  # the trainer skips its own loss pass

    def __init__(self, score: Callable[[list, list, list[str]], dict[str, float]], source: ExampleSource,
                 labels: list[str], device: torch.device) -> None:
        self.score, self.source, self.labels, self.device = score, source, labels, device

    def __call__(self, model: nn.Module) -> dict[str, float]:
        gold, pred, loss = predict(model, self.source, self.device, self.labels)
        return {"loss": loss, **self.score(gold, pred, self.labels)}
