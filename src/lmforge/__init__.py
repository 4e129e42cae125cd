"""lmforge: raw bilingual text to a served language model.

Kept deliberately import-light: heavy libraries (torch, tokenizers, ray) are imported inside the
functions that need them, so `import lmforge` and `lmforge --help` stay fast. The Python calls
behind the commands are in `lmforge.api` (`api.pretrain(...)` is `lmforge pretrain`, and so on).
"""

from lmforge.version import __version__

__all__ = ["__version__"]
