"""specpolicy.runs.records: atomic appends, torn-tail repair, no duplicates, steps superseded by the re-run."""

from __future__ import annotations

import json

import pytest

from specpolicy.runs import RecordStore, RunDirError, append_line, read_lines


def test_append_and_read_round_trip(tmp_path):
    p = tmp_path / "x.jsonl"
    for i in range(3):
        append_line(p, {"i": i, "s": "a\nb"})  # newlines inside values stay escaped: one line per object
    assert p.read_text().count("\n") == 3
    assert [r["i"] for r in read_lines(p)] == [0, 1, 2]
    assert read_lines(tmp_path / "missing.jsonl") == []


def test_nan_is_refused_not_written(tmp_path):
    with pytest.raises(ValueError):
        append_line(tmp_path / "x.jsonl", {"v": float("nan")})


def test_torn_last_line_is_truncated(tmp_path):
    p = tmp_path / "records.jsonl"
    append_line(p, {"i": 0})
    append_line(p, {"i": 1})
    good = p.read_bytes()
    with open(p, "ab") as f:
        f.write(b'{"i": 2, "tok')  # a write cut short (no newline)
    assert [r["i"] for r in read_lines(p)] == [0, 1]
    assert p.read_bytes() == good  # repaired: the next append starts on a clean line
    append_line(p, {"i": 2})
    assert [r["i"] for r in read_lines(p)] == [0, 1, 2]


def test_bad_last_complete_line_is_dropped_but_bad_middle_line_raises(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_bytes(b'{"i": 0}\n{"i": \n')
    assert read_lines(p) == [{"i": 0}]
    assert p.read_bytes() == b'{"i": 0}\n'
    p.write_bytes(b'{"i": 0}\nnot json\n{"i": 2}\n')
    with pytest.raises(RunDirError, match="line 2"):
        read_lines(p)


def test_read_without_repair_leaves_the_file(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_bytes(b'{"i": 0}\n{"i"')
    assert read_lines(p, repair=False) == [{"i": 0}]
    assert p.read_bytes() == b'{"i": 0}\n{"i"'


def _record(pid, policy, tokens=(1, 2)):
    return {"prompt_id": pid, "policy": policy, "token_ids": list(tokens)}


def test_store_resumes_and_refuses_duplicates(tmp_path):
    store = RecordStore(tmp_path)
    store.add(_record("a", "ar"), [{"step": 0}])
    store.add(_record("a", "fixed"), [{"step": 0}, {"step": 1}])
    with pytest.raises(RunDirError):
        store.add(_record("a", "ar"), [])
    again = RecordStore(tmp_path)
    assert again.done == {("a", "ar"), ("a", "fixed")}
    assert len(again.records) == 2
    assert again.steps_by_record()[("a", "fixed")] == [{"step": 0}, {"step": 1}]


def test_orphan_steps_of_a_killed_attempt_are_superseded(tmp_path):
    store = RecordStore(tmp_path)
    store.add(_record("a", "ar"), [{"step": 0}])
    # killed after the steps line of ("b", "ar") and before its record line:
    append_line(tmp_path / "steps.jsonl", {"prompt_id": "b", "policy": "ar", "steps": [{"step": 99}]})
    resumed = RecordStore(tmp_path)
    assert ("b", "ar") not in resumed.done
    assert list(resumed.steps_by_record()) == [("a", "ar")]  # the orphan has no record: not in steps.parquet
    resumed.add(_record("b", "ar"), [{"step": 0}])
    assert resumed.steps_by_record()[("b", "ar")] == [{"step": 0}]  # the re-run's line wins


def test_duplicate_records_on_disk_are_reported(tmp_path):
    lines = [json.dumps(_record("a", "ar")), json.dumps(_record("a", "ar"))]
    (tmp_path / "records.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunDirError, match="duplicate"):
        RecordStore(tmp_path)
