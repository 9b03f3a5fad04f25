"""The docs' Python snippets, run by the tests: a snippet is found by its first line (a comment
naming it) and run with the docs' example paths swapped for real ones."""

from __future__ import annotations

import re
import runpy
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def snippet(page: str, first_line: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)
    found = [b for b in blocks if b.startswith(first_line + "\n")]
    assert len(found) == 1, f"docs/{page}: {len(found)} python blocks open with {first_line!r}"
    return found[0]


def run_snippet(page: str, first_line: str, paths: dict[str, Path]) -> dict:
    """Run the snippet with each example path (a quoted string in it) replaced; returns its names.
    It runs from a file of its own: nnsight reads a trace's source back from the file it is in."""
    code = snippet(page, first_line)
    for example, real in paths.items():
        assert f'"{example}"' in code, f"docs/{page} {first_line!r}: no {example!r} to replace"
        code = code.replace(f'"{example}"', repr(str(real)))
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "snippet.py"
        script.write_text(code)
        return runpy.run_path(str(script))
