"""The hostile-input tests: each reproduces one attack and asserts the safe outcome.

Tests that measure memory or time import `hostile_limits` (this folder) and run the attack in a child
process under a hard address-space limit and deadline, so a regression fails instead of taking the
machine down.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
