"""The one thing pyproject.toml cannot declare stably: lmforge's C extensions (byte-level BPE ids,
hashed quality features).

Both are optional: without a C compiler the build still succeeds, and shard encoding then uses
tokenizers' own encoder, which gives the same ids more slowly (see lmforge.tokenize.fast), and the
quality classifier its pure-Python features (lmforge.quality.features), the same ones, far more slowly.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("lmforge.tokenize._fastbpe", ["src/lmforge/tokenize/_fastbpe.c"], optional=True),
    Extension("lmforge.quality._features", ["src/lmforge/quality/_features.c"], optional=True,
              extra_compile_args=["-O3"]),
])
