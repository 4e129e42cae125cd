"""The labelled data one fine-tuning run trains on: the configured task, its training split cut to
`train_limit` (stratified, so a small labelled set keeps the class balance), checked for size."""

from __future__ import annotations

from lmforge.errors import UserError
from lmforge.finetune.config import FinetuneConfig
from lmforge.tasks.examples import TaskData


def load_task_data(cfg: FinetuneConfig) -> TaskData:
    d = cfg.data
    if d.builtin is not None:
        from lmforge.tasks.builtin import load_task

        data = load_task(d.builtin, **{"seed": cfg.seed, **d.options})
    else:
        from lmforge.tasks.loaders import load_examples
        from lmforge.tasks.splits import make_task

        loader = d.loader.model_copy(update={"kind": cfg.task})
        data = make_task(cfg.task, load_examples(d.path, loader), val_frac=d.val_frac, test_frac=d.test_frac,
                         seed=cfg.seed)
    if d.train_limit is not None and d.train_limit < len(data.train):
        limit_train(data, d.train_limit, cfg.seed)
    if data.kind == "instruction" and cfg.task == "conversation":
        data.kind = "conversation"  # a prompt and its response is a one-turn conversation
    if data.kind != cfg.task:
        raise UserError(f"finetune.task is {cfg.task!r} but the data is a {data.kind!r} task")
    if not data.train or not data.val:
        raise UserError(f"the task has {len(data.train)} training and {len(data.val)} validation examples; need both")
    return data


def limit_train(data: TaskData, limit: int, seed: int) -> None:
    """Keep `limit` training examples, drawn stratified by label for classification."""
    from lmforge.tasks.splits import split

    keep = limit / len(data.train)
    by = "label" if data.kind == "classification" else None
    data.train, _, _ = split(data.train, val_frac=1 - keep, test_frac=0.0, seed=seed, stratify_by=by)
    data.train = data.train[:limit]
