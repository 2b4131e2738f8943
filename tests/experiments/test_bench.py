"""``python -m experiments.bench``: our policies and every transformers peer in one interleaved run on the shipped
model (1 prompt x 8 tokens), the identical-output check against greedy ``generate()``, and the one-line errors."""

from __future__ import annotations

import json

import pytest

from experiments.bench import PEERS, _rows, execute, table, validate
from experiments.common import UserError, compose

SMALL = ["data.n_prompts=1", "data.prompt_tokens=16", "new_tokens=8", "repeats=1", "threads=1", "cost_depth=1"]
LOSSY = 'threshold:{"tau_trust":0.0}'  # trusts every draft: its run commits trusted tokens


def bench_cfg(*overrides: str):
    return compose("bench", [*SMALL, *overrides], ("model", "drafter", "data"))


def test_bench_every_peer_in_one_run(tmp_path):
    res = execute(bench_cfg(f"policies=[ar,'{LOSSY}']"), tmp_path)
    rows = res["rows"]
    assert set(rows) == {"ar", "threshold(tau_trust=0.0)", *(f"hf_{p}" for p in PEERS)}
    for name, r in rows.items():
        assert isinstance(r["identical_to_generate"], bool) and isinstance(r["lossless"], bool), name
        assert r["tpf"] >= 1.0 and r["speedup_vs_generate"] > 0, name
    g = rows["hf_generate"]  # the forward hook counts one target forward per greedy token, prefill included
    assert g["tpf"] == 1.0 and g["identical_to_generate"] and g["speedup_vs_generate"] == 1.0
    assert rows["ar"]["identical_to_generate"] and rows["ar"]["lossless"]  # greedy ar is bit-for-bit generate()
    assert not rows["threshold(tau_trust=0.0)"]["lossless"]
    assert all(rows[f"hf_{p}"]["lossless"] and rows[f"hf_{p}"]["tpf_counted_by"] == "forward hook" for p in PEERS)
    assert res["peers"]["hf_assisted_conf"]["assistant"]["assistant_confidence_threshold"] == 0.4
    assert json.loads((tmp_path / "bench.json").read_text())["rows"].keys() == rows.keys()
    md = (tmp_path / "bench.md").read_text()
    assert "| vs generate() |" in md and "| hf_assisted_conf |" in md


def test_identical_column_detects_a_difference():
    runners = {"ar": None, "fixed": None, "hf_generate": None, "hf_prompt_lookup": None}
    outputs = {"ar": [(1, 2)], "fixed": [(1, 2)], "hf_generate": [(1, 2)], "hf_prompt_lookup": [(1, 3)]}
    rows = _rows(runners, {n: [1.0] for n in runners}, outputs, {n: 2 for n in runners},
                 {n: True for n in runners}, outputs["hf_generate"])
    assert [n for n, r in rows.items() if not r["identical_to_generate"]] == ["hf_prompt_lookup"]
    res = {"rows": rows, "cost": {"c": {1: 1.0}, "mtp_step_s": 1e-3, "mtp_step_rel": 0.1, "target_forward_s": {1: 1e-2}}}
    assert "differs from greedy generate(): hf_prompt_lookup" in table(res)
    no_generate = _rows({"ar": None}, {"ar": [1.0]}, {"ar": [(1,)]}, {"ar": 1}, {"ar": True}, [(2,)])
    assert no_generate["ar"]["speedup_vs_generate"] is None and not no_generate["ar"]["identical_to_generate"]


@pytest.mark.parametrize("override, message", [
    ("peers=[generat]", "unknown peer 'generat'; did you mean 'generate'?"),
    ("peers=[use_mtp,use_mtp]", "peers lists 'use_mtp' twice"),
    ("assistant_tokens=0", "assistant_tokens=0 is invalid"),
    ("assistant_confidence=1.5", "assistant_confidence=1.5 is invalid"),
    ("engine=fast", "engine=fast is unknown; allowed: auto, lean, packed, transformers"),
])
def test_bad_peer_settings_are_one_line(override, message):
    with pytest.raises(UserError, match=message.replace("?", r"\?").replace("(", r"\(")) as err:
        validate(bench_cfg(override))
    assert "\n" not in str(err.value)


def test_bench_runs_our_variants_on_the_packed_engine(tmp_path):
    res = execute(bench_cfg("engine=packed", "policies=[ar,'fixed:{\"k\":3}']", "peers=[]"), tmp_path)
    assert res["engine"] == "packed" and "our variants' engine: packed" in (tmp_path / "bench.md").read_text()
    assert all(r["identical_to_generate"] for r in res["rows"].values())
