"""Prompts from a user's file: JSONL (``{"prompt": ...}`` or ``{"text": ...}`` per line, optional ``"id"``) or plain
text (one prompt per line; use JSONL for prompts that span lines).

A file is JSONL if its name ends in ``.jsonl`` or its first line starts with ``{``. Every problem is one line naming
the file, the line and what is allowed (``PromptFileError``), so a run can refuse it before decoding starts.

Example:
    >>> read_prompt_file("prompts.jsonl")
    [('prompts.jsonl:1', 'def parse(')]
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError

__all__ = ["PromptFileError", "read_prompt_file"]


class PromptFileError(UserError):
    """A prompt file that is missing, unreadable, malformed or holds an empty prompt."""


def read_prompt_file(path: str | Path, n: int = 0) -> list[tuple[str, str]]:
    """(id, text) per prompt, in file order; the first ``n`` only if ``n`` > 0.

    Example:
        >>> read_prompt_file("prompts.txt", n=2)
        [('prompts.txt:1', 'import os'), ('prompts.txt:2', 'class A:')]
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise PromptFileError(f"prompt file {str(path)!r} does not exist; allowed: a .jsonl or a text file")
    try:
        raw = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PromptFileError(f"prompt file {str(path)!r} cannot be read as UTF-8 text ({err.__class__.__name__})") from None
    lines = raw.removesuffix("\n").split("\n") if raw else []
    jsonl = p.suffix == ".jsonl" or (bool(lines) and lines[0].lstrip().startswith("{"))
    out = []
    for i, line in enumerate(lines, start=1):
        if jsonl and not line.strip():
            continue  # blank lines between JSON objects are layout, not prompts
        pid, text = _parse_jsonl(p, i, line) if jsonl else (f"{p.name}:{i}", line)
        if not text.strip():
            raise PromptFileError(f"{p.name} line {i}: empty prompt; allowed: non-empty text on every line")
        out.append((pid, text))
    if not out:
        raise PromptFileError(f"prompt file {str(path)!r} holds no prompts; allowed: at least one non-empty prompt")
    ids = [pid for pid, _ in out]
    if len(set(ids)) != len(ids):
        raise PromptFileError(f"{p.name}: prompt ids repeat; allowed: a unique \"id\" per line (or none)")
    return out[:n] if n > 0 else out


def _parse_jsonl(p: Path, i: int, line: str) -> tuple[str, str]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        raise PromptFileError(f"{p.name} line {i}: not valid JSON; allowed: {{\"prompt\": \"...\"}} per line") from None
    text = obj.get("prompt", obj.get("text")) if isinstance(obj, dict) else None
    if not isinstance(text, str):
        raise PromptFileError(f"{p.name} line {i}: no \"prompt\" or \"text\" string; allowed: {{\"prompt\": \"...\"}}")
    return str(obj.get("id", f"{p.name}:{i}")), text
