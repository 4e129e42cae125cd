"""A scorer for the tests (`scorers:NumberScore` once this folder is on sys.path): the score is written in
the text ("7.5 rest of the text"), "none" is a document that cannot be scored."""

from __future__ import annotations

import math

import numpy as np

from lmforge.quality.scoring import ScoreStage
from lmforge.records import Record


class NumberScore(ScoreStage):
    name = "number_score"

    def score_batch(self, records: list[Record]) -> np.ndarray:
        self.count("long", sum(len(r.text) > 40 for r in records))
        words = [r.text.split()[0] if r.text.split() else "none" for r in records]
        return np.array([math.nan if w == "none" else float(w) for w in words])
