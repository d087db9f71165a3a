"""The README's code snippets, as a user would paste them.

A snippet that a test runs is marked in the README by a comment right above its code block::

    <!-- snippet: NAME (tests/test_x.py runs it as written) -->
"""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_snippet(name: str) -> str:
    """The code of the ```python block marked ``<!-- snippet: name ... -->``."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- snippet: {re.escape(name)}\b.*?-->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README has no '{name}' snippet"
    return match.group(1)
