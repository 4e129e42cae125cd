"""`lmforge report`: one self-contained HTML page about a run directory.

It shows what the run has, and only that: the data funnel with drop reasons, document lengths
and languages, duplicate clusters, tokenizer fertility per language, training curves (loss,
learning rate, throughput, MFU), fine-tuning scores with confusion matrices and per-class F1,
generated samples, and the resolved configs. Charts are inline SVG, so the file opens offline.
matplotlib (the `report` extra) is imported only when a report is written.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of `run_dir` to `out` (default RUN/report.html) atomically; returns its path."""
    from lmforge.errors import MissingDependencyError, UserError

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependencyError("the run report needs matplotlib: pip install 'lmforge[report]'") from None
    from lmforge.records import atomic_path
    from lmforge.report.build import Run, build_sections, facts
    from lmforge.report.html import render_page

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    run = Run.open(run_dir)
    sections = build_sections(run)
    if not sections:
        raise UserError(f"{run_dir} holds nothing to report (no stats.json, stages/, log.jsonl, samples or "
                        "config.yaml): is it a run directory of lmforge run, pretrain, finetune or demo?")
    name = run.config.get("name") or run_dir.resolve().name
    page = render_page(f"lmforge run report: {name}", facts(run, sections), sections)
    path = Path(out) if out is not None else run_dir / REPORT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    log.debug("report: %s (%d sections, %.0f kB)", path, len(sections), path.stat().st_size / 1e3)
    return path


def write_report_safely(run_dir: str | Path) -> Path | None:
    """The report at the end of a finished run: a failure is logged, never raised (the run itself is done)."""
    try:
        return write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - a report must never fail a run that finished
        log.warning("could not write the run report of %s: %s: %s (run `lmforge report %s` to retry)",
                    run_dir, type(exc).__name__, exc, run_dir, exc_info=log.isEnabledFor(logging.DEBUG))
        return None
