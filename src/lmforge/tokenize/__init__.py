"""Byte-level BPE tokenizers and the binary token files that training reads."""
