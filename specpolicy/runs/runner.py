"""Execute a ``RunPlan``: decode every (prompt, arm) pair not yet recorded, interleaved; then steps.parquet and
summary.json. The library half of ``python -m experiments.run`` (the app composes, validates, loads and prints).

Records are appended as they are decoded (``RecordStore``: one atomic line each), so a killed run resumes where it
stopped; each records the package version and the plan's ``run_key``, and ``open_store`` refuses a directory that
holds records of another version or configuration.

Example:
    >>> plan = validate(cfg)
    >>> store = open_store(run_dir, plan)
    >>> decode_run(plan, model, prompts, store)
    >>> summary = summarise_store(plan, store, run_dir)
"""

from __future__ import annotations

import json
from pathlib import Path

from .._version import __version__
from .arms import REFERENCE, Arm
from .checks import RunPlan, UserError, check_resume
from .records import RecordStore, RunDirError
from .steps import step_rows, write_steps_parquet

__all__ = ["classify_divergences", "decode_run", "open_store", "record_of", "summarise_store"]


def open_store(run_dir: str | Path, plan: RunPlan) -> RecordStore:
    """The run directory's records, checked to be resumable under ``plan`` (one-line ``UserError`` otherwise)."""
    try:
        store = RecordStore(run_dir)
    except RunDirError as err:
        raise UserError(str(err)) from None
    check_resume(store, plan, Path(run_dir), __version__)
    return store


def record_of(prompt, index: int, arm: Arm, res, run_key: str, nll: tuple[float, int] | None) -> dict:
    """One line of records.jsonl: the output, its provenance and statistics, acceptance counts by depth, NLL."""
    from ..metrics import acceptance_counts

    reached, ok = acceptance_counts([s.verdicts for s in res.steps])
    rec = {
        "prompt_id": prompt.id, "prompt_index": index, "policy": arm.label, "name": arm.name, "params": arm.params,
        "role": arm.role, "run_key": run_key, "specpolicy_version": __version__, "prompt_len": len(prompt.ids),
        "token_ids": list(res.token_ids), "text": res.text, "provenance": list(res.provenance),
        "finished_by": res.finished_by, "stats": res.stats.to_dict(), "accept_reached": reached, "accept_ok": ok,
    }
    if nll is not None:
        rec["nll_sum"], rec["nll_tokens"] = nll
    return rec


def decode_run(plan: RunPlan, model, prompts, store: RecordStore, progress: bool = True) -> None:
    """Every (prompt, arm) pair not yet in ``store``: prompts in order, arms rotated per prompt (the harness)."""
    from ..decoding.harness import interleaved, policy_runner
    from .scoring import target_nll

    arms = {a.label: a for a in plan.arms}
    runners = {label: policy_runner(model, a.policy, seed=plan.decode.seed, **plan.generate_kw)
               for label, a in arms.items()}
    cells = interleaved(prompts, runners, plan.decode.max_new_tokens, progress=progress, desc="prompts",
                        skip=lambda i, label: (prompts[i].id, label) in store.done)
    for c in cells:
        res = c.result
        nll = target_nll(model, res.prompt_ids, res.token_ids) if plan.nll else None
        store.add(record_of(c.prompt, c.index, arms[c.label], res, plan.run_key, nll),
                  step_rows(c.prompt.id, c.label, [s.to_dict() for s in res.steps]))


def classify_divergences(plan: RunPlan, model, prompts, store: RecordStore, run_dir: str | Path) -> dict:
    """For every lossless arm's greedy output that differs from ``ar``'s on a prompt: a numerical near-tie or a
    mismatch (``decoding.precision.classify_divergence``: the target's float32 gap between the two tokens at the
    first differing position, against the dtype's tolerance). Written to ``divergences.json`` as
    {"<prompt id>|<policy>": {kind, index, gap, tolerance}}; nothing for sampling runs (no reference)."""
    from ..decoding.precision import classify_divergence

    out = {}
    if not plan.sampling:
        ids = {p.id: list(p.ids) for p in prompts}
        lossless = {a.label for a in plan.arms if a.lossless and a.name != REFERENCE}
        ref = {r["prompt_id"]: r for r in store.records if r["policy"] == REFERENCE}
        for r in store.records:
            a = ref.get(r["prompt_id"])
            if r["policy"] in lossless and a is not None and r["token_ids"] != a["token_ids"]:
                d = classify_divergence(model, ids[r["prompt_id"]], r["token_ids"], a["token_ids"])
                out[f"{r['prompt_id']}|{r['policy']}"] = d.to_dict()
    path = Path(run_dir) / "divergences.json"
    path.write_text(json.dumps({"dtype": str(model.dtype).removeprefix("torch."), "divergences": out}, indent=1)
                    + "\n")
    return out


def summarise_store(plan: RunPlan, store: RecordStore, run_dir: str | Path, divergences: dict | None = None) -> dict:
    """Write steps.parquet and summary.json (``metrics.summarise_run`` over the plan's arms, with the near-tie /
    mismatch split of ``divergences``); return the summary."""
    from ..metrics import summarise_run

    run_dir = Path(run_dir)
    write_steps_parquet(store, run_dir / "steps.parquet")
    labels = {a.label: {"name": a.name, "params": a.params, "role": a.role, "lossless": a.lossless}
              for a in plan.arms}
    records = [r for r in store.records if r["policy"] in labels]
    summary = summarise_run(records, reference=REFERENCE, sampling=plan.sampling, n_resamples=plan.bootstrap, seed=0,
                            policies=labels, divergences=divergences)
    summary["run_dir"] = str(run_dir)
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(run_dir / "summary.json")
    return summary
