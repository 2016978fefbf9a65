"""Command line: ``python -m s2s_fused {info,...}``."""
from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
