"""Deduplication: exact, near-duplicate, line-level, decontamination."""
