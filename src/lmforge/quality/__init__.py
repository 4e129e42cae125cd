"""Learned quality filtering: annotate documents with a model, train a fast classifier on those
ratings, and score or filter a corpus with it (or with a transformer classifier, or by perplexity).

Every scorer writes `meta["quality"][key]` and keeps documents by a per-language threshold or top
fraction (`quality.scoring.ScoreStage`), so the report reads all of them the same way.
"""
