"""Results IO of one run directory: atomic, resumable JSONL records and step sidecar, steps.parquet, environment,
prompt files, and the teacher-forced target NLL used by the run summary.

Example:
    >>> store = RecordStore(run_dir)                 # loads complete lines, truncates a torn last line
    >>> if ("file.py:12", "threshold") not in store.done: store.add(record, steps)
    >>> write_steps_parquet(store, run_dir / "steps.parquet")
"""

from .environment import environment_info, git_revision
from .prompt_file import PromptFileError, read_prompt_file
from .records import RecordStore, RunDirError, append_line, read_lines
from .scoring import target_nll
from .steps import STEP_COLUMNS, step_rows, write_steps_parquet

__all__ = [
    "RecordStore", "RunDirError", "append_line", "read_lines", "PromptFileError", "read_prompt_file",
    "environment_info", "git_revision", "target_nll", "STEP_COLUMNS", "step_rows", "write_steps_parquet",
]
