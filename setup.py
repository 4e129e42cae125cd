"""The one thing pyproject.toml cannot declare stably: lmforge's C extension (byte-level BPE ids).

It is optional: without a C compiler the build still succeeds, and shard encoding then uses
tokenizers' own encoder, which gives the same ids more slowly (see lmforge.tokenize.fast).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("lmforge.tokenize._fastbpe", ["src/lmforge/tokenize/_fastbpe.c"], optional=True)])
