"""The README's Python examples run as written: each ```python block in a fresh interpreter, on CPU (Triton under
its interpreter). A block that truly needs a GPU is marked by the line ``<!-- needs-gpu -->`` right above it and
is skipped here (run on a GPU machine)."""
from __future__ import annotations

import os
import re

import pytest

from tests.helpers import ROOT, run_python

README = os.path.join(ROOT, "README.md")
NEEDS_GPU = "<!-- needs-gpu -->"


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line number, code, needs a GPU) of every ```python block."""
    blocks = []
    for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        line = text.count("\n", 0, m.start()) + 1
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        blocks.append((line, m.group(1), before == NEEDS_GPU))
    return blocks


BLOCKS = python_blocks(open(README).read())


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4, [line for line, _, _ in BLOCKS]


@pytest.mark.parametrize("line,code,needs_gpu", BLOCKS, ids=[f"README.md:{b[0]}" for b in BLOCKS])
def test_readme_block_runs(line, code, needs_gpu):
    if needs_gpu:
        pytest.skip(f"README.md:{line} is marked {NEEDS_GPU}")
    run_python(code, timeout=600, TRITON_INTERPRET="1")
