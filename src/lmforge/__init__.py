"""lmforge: raw bilingual text to a served language model.

Kept deliberately import-light: heavy libraries (torch, tokenizers, ray) are imported
inside the functions that need them so that `import lmforge` and `lmforge --help` stay fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
