"""Prompt files shared by the commands: a JSON list of strings, or a text file with one prompt per line."""

from __future__ import annotations

import json
import os


def read_prompt_file(path: str, flag: str = "--prompts") -> list[str]:
    """Prompts from ``path``: a JSON list (``.json`` or content starting with ``[``) or one prompt per line
    (blank lines and ``#`` comments skipped). Raises with the flag name and the fix when the file is unusable."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path!r}: no such file. Pass a text file with one prompt per line or a JSON "
                                f"list of prompts.")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{flag} {path!r} is not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset "
                         f"{e.start}); save the file as UTF-8.") from e
    if path.lower().endswith(".json") or text.lstrip().startswith("["):
        try:
            prompts = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{flag} {path!r} is not valid JSON ({e}); expected a list of prompt strings.") from e
        if not isinstance(prompts, list) or not all(isinstance(x, str) for x in prompts):
            raise ValueError(f"{flag} {path!r} must hold a JSON list of strings.")
    else:
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise ValueError(f"{flag} {path!r} has no prompts; write one prompt per line.")
    return prompts
