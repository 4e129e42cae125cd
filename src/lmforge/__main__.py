"""`python -m lmforge ...` is the `lmforge` command, for environments where the script is not on PATH."""

import sys

from lmforge.cli.main import main

sys.exit(main())
