"""Calibration rows: only judged drafts, correct depth/position/labels, from results, run directories and ``collect``,
and the rows recorded from the shipped model (``data/rows.parquet``)."""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import pytest
import torch

from specpolicy.calibration import (
    ROW_COLUMNS,
    CalibrationDataError,
    collect,
    rows_from_results,
    rows_from_run,
    rows_from_steps,
)
from specpolicy.decoding import StepRecord, generate
from specpolicy.models.loading import TinyConfig, build_mtp_model

RECORDED = Path(__file__).parent / "data" / "rows.parquet"


def _step(step, position, drafts, conf, verdicts, trusted=None, accept_prob=None) -> StepRecord:
    m, w = len(drafts), len(verdicts)
    trusted = tuple(trusted or (False,) * m)
    return StepRecord(
        step=step, position=position, drafts=tuple(drafts), confidence=tuple(conf), entropy=tuple(0.1 * j for j in
        range(m)), margin=tuple(c / 2 for c in conf), action="trust" if any(trusted) else "verify", trusted=trusted,
        verdicts=tuple(verdicts), accept_prob=tuple(accept_prob or [float(v) for v in verdicts]), accepted=0,
        committed=(), provenance=(), target_tokens=tuple(range(w)), draft_s=0.0, verify_s=0.0,
    )  # fmt: skip


@functools.lru_cache(maxsize=2)
def _model(seed: int = 0):
    """A tiny random MTP model with a sharpened head and a drafter tied to the embedding: some drafts right, some not."""
    cfg = TinyConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=64, num_mtp_layers=2, max_position_embeddings=256).to_hf()
    model = build_mtp_model(cfg, seed=seed)
    model.target.double()
    model.drafter.double()
    with torch.no_grad():
        model.target.get_output_embeddings().weight.mul_(20.0)
        for layer in model.drafter.layers:
            w = layer.eh_proj.weight  # [H, 2H]: pass the token embedding through, ignore the hidden state
            w.zero_()
            w[:, :32] += torch.eye(32, dtype=w.dtype)
    return model


PROMPTS = [[1, 2, 3, 4], [5, 9, 11], [7, 7, 8, 30, 2], [40, 41]]


def test_rows_keep_only_walked_drafts_with_their_depth_position_and_label():
    steps = [
        _step(0, 1, [5, 6, 7], [0.9, 0.8, 0.7], [True, False]),  # rejected at depth 2: d_3 never judged
        _step(1, 3, [8, 9], [0.6, 0.5], [True, True], accept_prob=[1.0, 1.0]),  # all accepted
        _step(2, 6, [], [], []),  # no drafts
        _step(3, 7, [1, 2, 3], [0.99, 0.2, 0.4], [False, True, False], trusted=[True, False, False]),  # trusted d_1
    ]
    rows = rows_from_results([steps], ["p"], "threshold")
    assert tuple(rows.columns) == ROW_COLUMNS
    assert rows["step"].tolist() == [0, 0, 1, 1, 3, 3, 3]
    assert rows["depth"].tolist() == [1, 2, 1, 2, 1, 2, 3]
    assert rows["position"].tolist() == [1, 2, 3, 4, 7, 8, 9]  # the step's position + j - 1
    assert rows["draft"].tolist() == [5, 6, 8, 9, 1, 2, 3]
    assert rows["confidence"].tolist() == [0.9, 0.8, 0.6, 0.5, 0.99, 0.2, 0.4]
    assert rows["label"].tolist() == [1, 0, 1, 1, 0, 1, 0]  # the trusted d_1 keeps its shadow verdict
    assert rows["trusted"].tolist() == [False, False, False, False, True, False, False]
    assert rows["entropy"].tolist() == pytest.approx([0.0, 0.1, 0.0, 0.1, 0.0, 0.1, 0.2])
    assert (rows["prompt_id"] == "p").all() and (rows["policy"] == "threshold").all()


def test_rows_from_steps_rejects_a_corrupt_table_and_handles_an_empty_one():
    rows = rows_from_results([[_step(0, 1, [], [], [])]], ["p"], "ar")
    assert rows.empty and tuple(rows.columns) == ROW_COLUMNS
    bad = pd.DataFrame([_step(0, 1, [5, 6], [0.9], [True, True]).to_dict()]).assign(prompt_id="p", policy="x")
    with pytest.raises(CalibrationDataError, match="confidence"):
        rows_from_steps(bad)
    with pytest.raises(CalibrationDataError, match="lacks columns"):
        rows_from_steps(bad.drop(columns=["verdicts"]))
    with pytest.raises(ValueError, match="one id per result"):
        rows_from_results([[]], ["a", "b"], "x")


def test_collect_labels_every_depth_with_greedy_verdicts():
    model = _model()
    rows = collect(model, PROMPTS, k=4, max_new_tokens=24)
    results = [generate(model, p, "fixed", k=4, max_new_tokens=24) for p in PROMPTS]
    assert rows.equals(rows_from_results(results, [str(i) for i in range(len(PROMPTS))], "fixed"))
    # every depth 1..k is labelled, with both verdicts present; fixed(k) drafts k every step (budget permitting)
    assert set(rows["depth"]) == {1, 2, 3, 4} and set(rows["label"]) == {0, 1}
    for res, pid in zip(results, map(str, range(len(PROMPTS)))):
        part = rows[rows["prompt_id"] == pid]
        assert len(part) == sum(len(s.verdicts) for s in res.steps)
        for s in res.steps:
            got = part[part["step"] == s.step]
            walked = len(s.verdicts)
            # greedy: the label is "d_j == target's argmax"; a 0 can only be the last judged draft of its step
            assert got["label"].tolist() == [int(d == t) for d, t in zip(s.drafts, s.target_tokens)][:walked]
            assert 0 not in got["label"].tolist()[:-1]
            assert walked == len(s.drafts) or got["label"].tolist()[-1] == 0
    assert (rows["soft_label"] == rows["label"]).all()  # greedy: accept_prob is the verdict


def test_collect_with_sampling_records_soft_labels():
    rows = collect(_model(), PROMPTS[:2], k=3, max_new_tokens=16, temperature=1.0, seed=3)
    assert set(rows["label"]) <= {0, 1}
    assert rows["soft_label"].between(0, 1).all() and not rows["soft_label"].isin([0.0, 1.0]).all()
    again = collect(_model(), PROMPTS[:2], k=3, max_new_tokens=16, temperature=1.0, seed=3)
    assert rows.equals(again)  # prompt i is sampled with seed + i


def test_rows_from_run_reads_steps_parquet_and_explains_what_is_missing(tmp_path):
    from specpolicy.runs.steps import SCHEMA, step_rows

    with pytest.raises(CalibrationDataError, match="does not exist") as err:
        rows_from_run(tmp_path / "nope")
    assert "\n" not in str(err.value)
    with pytest.raises(CalibrationDataError, match="has no steps.parquet"):
        rows_from_run(tmp_path)
    import pyarrow as pa
    import pyarrow.parquet as pq

    model = _model()
    results = {pol: [generate(model, p, pol, max_new_tokens=16) for p in PROMPTS[:2]] for pol in ("fixed", "ar")}
    table = [row for pol, rs in results.items() for pid, r in zip("ab", rs)
             for row in step_rows(pid, pol, [s.to_dict() for s in r.steps])]
    pq.write_table(pa.Table.from_pylist(table, schema=SCHEMA), tmp_path / "steps.parquet")
    rows = rows_from_run(tmp_path)
    assert rows.equals(rows_from_results(results["fixed"], ["a", "b"], "fixed"))  # ar drafts nothing: no rows
    assert rows_from_run(tmp_path, policy="ar").empty
    with pytest.raises(CalibrationDataError, match="policy 'fixd' is not in .*allowed: ar, fixed"):
        rows_from_run(tmp_path, policy="fixd")


# ---- the trust guarantee on recorded data ----------------------------------------------------------------------


def _recorded() -> pd.DataFrame:
    if not RECORDED.is_file():
        pytest.skip(f"{RECORDED} missing: python -m experiments.calibrate, then copy its rows.parquet")
    return pd.read_parquet(RECORDED)


def test_recorded_rows_come_from_the_shipped_model_and_cover_every_depth():
    rows = _recorded()
    assert tuple(rows.columns[: len(ROW_COLUMNS)]) == ROW_COLUMNS
    assert rows["prompt_id"].nunique() >= 50 and set(rows["depth"]) == set(range(1, 7))
    assert set(rows["label"]) == {0, 1}
