"""Append-only JSONL files that survive a kill: ``records.jsonl`` (one line per (prompt, policy)) and ``steps.jsonl``.

A line is written with ONE ``os.write`` on an ``O_APPEND`` descriptor, then ``fsync``'d: a crash leaves at most a
torn *last* line, never an interleaved or half-written one in the middle. Opening a ``RecordStore`` reads the complete
lines and truncates a torn tail, so a resumed run skips the pairs already recorded and never writes a duplicate.

The steps of a record are appended to ``steps.jsonl`` *before* the record itself: a record line therefore always has
its steps; a steps line whose record never landed (killed in between) is superseded by the re-run's line.

Example:
    >>> store = RecordStore("runs/run/2024-01-01_12-00-00")
    >>> ("Lib/json/decoder.py:40", "ar") in store.done
    False
    >>> store.add({"prompt_id": "Lib/json/decoder.py:40", "policy": "ar", ...}, steps=[...])
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError

__all__ = ["RecordStore", "RunDirError", "append_line", "read_lines"]


class RunDirError(UserError):
    """A results directory that cannot be resumed (a corrupt line before the end, records of another config)."""


def append_line(path: str | Path, obj: dict) -> None:
    """Append ``obj`` as one JSON line: a single ``os.write`` on an O_APPEND fd, then fsync.

    Example:
        >>> append_line(tmp_path / "x.jsonl", {"a": 1})
    """
    data = (json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # a regular file only writes short when the disk is full
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes (disk full?)")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: str | Path, repair: bool = True) -> list[dict]:
    """The complete JSON lines of ``path`` ([] if it does not exist).

    A last line without its newline (or that does not parse) is torn: with ``repair`` the file is truncated to the
    end of the last complete line. A bad line anywhere else raises ``RunDirError``.

    Example:
        >>> read_lines(tmp_path / "records.jsonl")
        [{'a': 1}]
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")  # the last element is b"" iff the file ends with a newline
    out, good_end, pos = [], 0, 0
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        end = pos + len(line) + (0 if last else 1)
        if line.strip():
            try:
                obj = None if last else json.loads(line)  # a last piece without "\n" is torn by definition
            except json.JSONDecodeError:
                obj = None
            if obj is None:
                if not last and i != len(lines) - 2:
                    raise RunDirError(f"{path}: line {i + 1} is not valid JSON; allowed: a complete JSON object per line")
                break
            out.append(obj)
        good_end, pos = end, end
    if repair and good_end < len(raw):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return out


class RecordStore:
    """records.jsonl + steps.jsonl of one run directory, keyed by (prompt_id, policy label)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.records_path = self.run_dir / "records.jsonl"
        self.steps_path = self.run_dir / "steps.jsonl"
        self.records: list[dict] = read_lines(self.records_path)
        read_lines(self.steps_path)  # repair a torn tail before anything is appended after it
        self.done: set[tuple[str, str]] = set()
        for r in self.records:
            key = (r["prompt_id"], r["policy"])
            if key in self.done:
                raise RunDirError(f"{self.records_path}: duplicate record for {key}")
            self.done.add(key)

    def add(self, record: dict, steps: list[dict]) -> None:
        """Append the steps line, then the record line (the record is what marks the pair done)."""
        key = (record["prompt_id"], record["policy"])
        if key in self.done:
            raise RunDirError(f"record for {key} already exists in {self.records_path}")
        append_line(self.steps_path, {"prompt_id": key[0], "policy": key[1], "steps": steps})
        append_line(self.records_path, record)
        self.records.append(record)
        self.done.add(key)

    def steps_by_record(self) -> dict[tuple[str, str], list[dict]]:
        """Steps of every recorded pair (the last steps line per pair; orphans of killed attempts are dropped)."""
        latest = {(s["prompt_id"], s["policy"]): s["steps"] for s in read_lines(self.steps_path, repair=False)}
        return {key: latest[key] for key in ((r["prompt_id"], r["policy"]) for r in self.records) if key in latest}
