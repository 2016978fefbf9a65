import sys
from pathlib import Path

# bench_*.py import `common` from this folder and `s2s_fused` from the repository root.
HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
