"""What the benchmark scripts share: writing a Markdown report where ``--out`` says and showing it."""

from __future__ import annotations

import os


def write_report(text: str, out: str) -> None:
    """Write ``text`` to ``out`` (creating its folder) and print it."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    print(text)
