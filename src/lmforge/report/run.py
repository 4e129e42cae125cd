"""The run directory a report is built from, its shared files read once for every section."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config import load_yaml_file
from lmforge.records import read_json
from lmforge.report import data


@dataclass
class Run:
    """The files of a run directory the sections share, read once."""

    dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] | None = None
    output: Path | None = None
    _quarantine: Any = None

    def quarantine(self) -> data.Quarantine | None:
        """The quarantine scan, shared by the funnel (drop examples) and the duplicates section."""
        if self._quarantine is None:
            self._quarantine = [data.scan_quarantine(self.dir)]
        return self._quarantine[0]

    @classmethod
    def open(cls, run_dir: Path) -> Run:
        config_path = run_dir / "config.yaml"
        config = (load_yaml_file(config_path, "run config") or {}) if config_path.is_file() else {}
        stats = data.load_stats(run_dir)
        return cls(run_dir, config if isinstance(config, dict) else {}, stats, data.output_dir(run_dir, stats))

    @property
    def steps(self) -> dict[str, Any]:
        return (self.stats or {}).get("steps") or self._steps_from_markers()

    def _steps_from_markers(self) -> dict[str, Any]:
        """Step summaries when stats.json is missing (the runner leaves RUN/steps/NAME.done per step)."""
        return {marker.name.removesuffix(".done"): read_json(marker)
                for marker in sorted((self.dir / "steps").glob("*.done"))}
