"""Grid search over fine-tuning settings: one `finetune` per point of `cfg.search`, on the same data,
ranked by the validation metric that selects checkpoints (the test split only reports)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from lmforge.errors import UserError
from lmforge.finetune.config import FinetuneConfig
from lmforge.finetune.run import finetune
from lmforge.finetune.task_data import load_task_data


def search(cfg: FinetuneConfig, out_dir: str | Path) -> list[dict[str, Any]]:
    """Each point fine-tunes into out/<i>; the table ranks by validation."""
    if not cfg.search:
        raise UserError("finetune.search is empty; give e.g. {lr: [1e-4, 3e-4], batch_size: [16, 32]}")
    unknown = sorted(set(cfg.search) - set(FinetuneConfig.model_fields))
    if unknown:
        raise UserError(f"finetune.search: {unknown} are not config fields")
    out = Path(out_dir)
    data = load_task_data(cfg)
    key, mode = cfg.selection()
    rows = []
    names = list(cfg.search)
    for i, values in enumerate(itertools.product(*(cfg.search[n] for n in names))):
        point = dict(zip(names, values, strict=True))
        run_cfg = FinetuneConfig.model_validate({**cfg.model_dump(by_alias=True), **point, "search": None})
        result = finetune(run_cfg, out / f"{i:03d}", data=data)
        rows.append({**point, f"val_{key}": result.val.get(key), **{f"test_{k}": v for k, v in result.test.items()},
                     "steps": result.steps, "dir": f"{i:03d}"})
    rows.sort(key=lambda r: r[f"val_{key}"], reverse=mode == "max")
    _write_table(out, rows, key, mode)
    return rows


def _write_table(out: Path, rows: list[dict[str, Any]], key: str, mode: str) -> None:
    from lmforge.evaluate.report import to_markdown
    from lmforge.records import atomic_path, write_json_atomic

    write_json_atomic(out / "search.json", {"selected_by": f"val {key} ({mode})", "runs": rows})
    with atomic_path(out / "search.md") as tmp:
        tmp.write_text(to_markdown(rows, title=f"hyperparameter search, best val {key} first") + "\n", encoding="utf-8")
    (out / "best.json").write_text(json.dumps(rows[0], indent=2), encoding="utf-8")
