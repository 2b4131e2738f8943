"""``steps.parquet``: every step (target forward) of every record in one table, for analysis and calibration.

Built at the end of a run from the ``steps.jsonl`` sidecar (see ``records``); one row per step with the drafts, their
confidences q(d_j), entropies and margins, the policy's action and trust mask, the strict (or shadow) verdicts, the
acceptance probabilities, the target's tokens and the timings. The schema is explicit, so columns that are empty in a
run (``ar`` never drafts) still get their proper list types.

Example:
    >>> import pandas as pd
    >>> steps = pd.read_parquet(run_dir / "steps.parquet")
    >>> steps.groupby("policy").accepted.mean()
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .records import RecordStore

__all__ = ["STEP_COLUMNS", "step_rows", "write_steps_parquet"]

_INTS, _FLOATS, _BOOLS = pa.list_(pa.int64()), pa.list_(pa.float64()), pa.list_(pa.bool_())
SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("policy", pa.string()), ("step", pa.int64()), ("position", pa.int64()),
    ("drafts", _INTS), ("confidence", _FLOATS), ("entropy", _FLOATS), ("margin", _FLOATS),
    ("action", pa.string()), ("trusted", _BOOLS), ("verdicts", _BOOLS), ("accept_prob", _FLOATS),
    ("accepted", pa.int64()), ("committed", _INTS), ("provenance", pa.list_(pa.string())),
    ("target_tokens", _INTS), ("draft_s", pa.float64()), ("verify_s", pa.float64()),
])
STEP_COLUMNS = tuple(SCHEMA.names)


def step_rows(prompt_id: str, policy: str, steps: list[dict]) -> list[dict]:
    """One flat row per step dict (``StepRecord.to_dict()``), keyed by prompt and policy label.

    Example:
        >>> step_rows("a.py:1", "ar", [rec.to_dict() for rec in result.steps])[0]["action"]
        'verify'
    """
    return [{"prompt_id": prompt_id, "policy": policy, **{c: s.get(c) for c in STEP_COLUMNS[2:]}} for s in steps]


def write_steps_parquet(store: RecordStore, path: str | Path) -> int:
    """Write every recorded pair's steps to ``path`` (parquet); returns the number of rows.

    Example:
        >>> write_steps_parquet(RecordStore(run_dir), run_dir / "steps.parquet")
        1843
    """
    rows = [row for (pid, pol), steps in store.steps_by_record().items() for row in step_rows(pid, pol, steps)]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    tmp = Path(path).with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return len(rows)
