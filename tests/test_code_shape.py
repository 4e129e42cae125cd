"""The size rules of docs/architecture.md: modules stay readable in one sitting, and the runner,
pipeline, trainer and fine-tuning code keeps its functions short enough to have one job each."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lmforge"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
SHORT_FUNCTION_PACKAGES = ("pipeline", "train", "finetune", "flow")


def test_no_module_over_500_lines():
    long = {p.relative_to(SRC).as_posix(): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_over_80_lines_in_the_runner_pipeline_trainer_and_finetune():
    long = {}
    for package in SHORT_FUNCTION_PACKAGES:
        for path in (SRC / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long[f"{path.relative_to(SRC).as_posix()}:{node.lineno} {node.name}"] = lines
    assert long == {}
