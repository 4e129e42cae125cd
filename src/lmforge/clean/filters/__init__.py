"""Heuristic quality filters with the published thresholds: Gopher, C4, FineWeb, block lists.

One module per family. Every filter is Chinese-aware: a document whose `lang` is Chinese-like
(or, without a `lang`, whose text is mostly CJK) is measured in jieba words with Chinese
punctuation and stop words, against thresholds that have their own `*_zh` config fields where
the English value would be meaningless for Chinese. `common` holds the per-document analysis
that consecutive filters share, so a chain tokenizes each text once.
"""
