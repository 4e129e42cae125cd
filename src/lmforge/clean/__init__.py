"""Cleaning: extraction, normalization, language ID, quality filters, PII."""
