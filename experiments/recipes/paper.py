"""The paper's results, figures and numbers from scratch, in one Python process (the model loads once per drafter).

    bash experiments/recipes/paper.sh [--quick]          # the one command (this driver, then make -C paper)
    python -m experiments.recipes.paper [--quick] [--out ROOT] [--only STAGE ...]

Stages, in order (``STAGES``): ``runs`` (``experiments.run`` per drafter on the stdlib test split and on third-party
code, greedy; one sampling run; lossy and cost-aware policies), ``calibrate`` (``experiments.calibrate`` and
``experiments.validate_trust``), ``replay`` (``experiments.record`` + ``tune`` + ``replay_report``), ``bench``,
``figures`` (``analysis.make_figures``) and ``numbers`` (``analysis.paper_numbers``: ``numbers.tex`` and the tables).
Every job runs the app's own ``execute`` on a config composed by ``experiments.common.compose`` with a fixed results
directory ``ROOT/runs/paper/<job>``; a job whose directory holds ``.paper_done`` with the same overrides is skipped
(resumable; ``experiments.run`` also resumes a killed job record by record). Each job prints its time budget and the
elapsed time. ``ROOT`` is ``$PAPER_OUT`` or ``--out`` (default: the repository; ``--quick``: ``runs/paper_quick``).
Figures go to ``ROOT/paper/figures``, generated LaTeX to ``ROOT/paper/generated``.

Sizes (``SIZES``): ``full`` is budgeted at about 38 minutes plus TeX on 2 cores (small runs measured and scaled
linearly in prompts x tokens); ``quick`` is 2 prompts x 8 tokens everywhere, for the test suite (its goodput run
is given the nominal step cost instead of measuring one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from experiments.common import USER_ERRORS, compose

REPO = Path(__file__).resolve().parents[2]
DRAFTERS = ("mtp", "medusa", "draft", "ngram")
STAGES = ("runs", "calibrate", "replay", "bench", "figures", "numbers")

# Per mode: sizes of every job and its time budget in seconds (full: 2 idle cores, threads=1: faster than 2 there).
SIZES = {
    # quick: one run job of each kind (a drafter on each corpus, sampling, trust, relaxed, cost-aware), not all 14;
    # goodput gets the nominal step cost (specpolicy.policies.NOMINAL_STEP_COST) instead of measuring a cost model
    "quick": {"prompts": 2, "prompt_tokens": 16, "tokens": 8, "bootstrap": 50, "threads": 1, "figure": False,
              "run_subset": ("run_mtp_stdlib", "run_ngram_package", "run_mtp_sampling", "run_mtp_trust80",
                             "run_mtp_typical", "run_mtp_goodput"), "goodput_step_cost": (1.0, 1.4),
              "cal_prompts": 4, "certify_tokens": 8, "vt_prompts": 6, "vt_splits": 10, "rec_prompts": 2,
              "probe_depth": 4, "cost_reps": 1, "trials": 2, "remeasure": 1, "rr_prompts": 1, "bench_prompts": 1,
              "repeats": 1, "cost_depth": 1, "budget": {"run": 10, "calibrate": 10, "validate_trust": 10,
                                                         "record": 5, "tune": 10, "replay_report": 10, "bench": 10,
                                                         "figures": 30, "numbers": 5}},
    # full: measured on a loaded 2-core machine (threads=2): one run job of 8 prompts x 64 tokens (ar, fixed,
    # policy; NLL, 1000 resamples, figure) took 45 s, validate_trust of 8 prompts x 32 tokens x 4 policies 35 s;
    # scaled linearly in prompts x tokens. Sum of the budgets: about 38 min, plus TeX.
    "full": {"prompts": 12, "prompt_tokens": 64, "tokens": 64, "bootstrap": 1000, "threads": 1, "figure": True,
             "cal_prompts": 64, "certify_tokens": 32, "vt_prompts": 64, "vt_splits": 200, "rec_prompts": 12,
             "probe_depth": 8, "cost_reps": 10, "trials": 200, "remeasure": 4, "rr_prompts": 6, "bench_prompts": 8,
             "repeats": 3, "cost_depth": 7, "budget": {"run": 70, "calibrate": 180, "validate_trust": 300,
                                                        "record": 90, "tune": 120, "replay_report": 200,
                                                        "bench": 360, "figures": 60, "numbers": 10}},
}
TAU_TRUST = (0.95, 0.8)  # lossy threshold runs (mtp, stdlib): the threshold sweep of the paper


def run_jobs(s: dict) -> list[tuple[str, str, list[str]]]:
    """(job name, app, overrides) of the ``runs`` stage for sizes ``s``.

    Example:
        >>> [n for n, _, _ in run_jobs(SIZES["full"])][:3]
        ['run_mtp_stdlib', 'run_mtp_package', 'run_medusa_stdlib']
    """
    common = [f"data.n_prompts={s['prompts']}", f"data.prompt_tokens={s['prompt_tokens']}",
              f"decode.max_new_tokens={s['tokens']}", f"threads={s['threads']}", f"bootstrap={s['bootstrap']}",
              f"figure={str(s['figure']).lower()}"]
    jobs = []
    for d in DRAFTERS:
        for data in ("stdlib", "package"):
            jobs.append((f"run_{d}_{data}", "run", [f"drafter={d}", "policy=threshold",
                                                      f"data={'stdlib_test' if data == 'stdlib' else 'package'}",
                                                      *common]))
    jobs.append(("run_mtp_sampling", "run", ["drafter=mtp", "policy=fixed", "decode=sampling",
                                             "decode.temperature=1.0", *common]))
    for tau in TAU_TRUST:
        jobs.append((f"run_mtp_trust{int(round(tau * 100))}", "run",
                     ["policy=threshold", f"policy.tau_trust={tau}", *common]))
    cost = s.get("goodput_step_cost")  # None (full): the run measures its cost model
    for pol in ("typical", "topk_relaxed", "goodput"):
        given = [f"policy.step_cost=[{','.join(map(str, cost))}]"] if pol == "goodput" and cost else []
        jobs.append((f"run_mtp_{pol}", "run", [f"policy={pol}", *given, *common]))
    subset = s.get("run_subset")
    return [j for j in jobs if j[0] in subset] if subset else jobs


def other_jobs(s: dict, out: Path) -> dict[str, list[tuple[str, str, list[str]]]]:
    """The jobs of the stages after ``runs``: calibrate, replay, bench (name, app, overrides)."""
    th = f"threads={s['threads']}"
    trace = out / "record" / "trace.safetensors"
    return {
        "calibrate": [
            ("calibrate", "calibrate", [f"n_prompts={s['cal_prompts']}", f"prompt_tokens={s['prompt_tokens']}",
                                        f"max_new_tokens={s['tokens']}", f"certify_tokens={s['certify_tokens']}",
                                        "certify=[raw]", "alpha=0.1", "taus=[0.95,0.8,0.6]", f"n_boot={s['bootstrap'] // 5}",
                                        f"figures={str(s['figure']).lower()}", th]),
            ("validate_trust", "validate_trust", [f"n_prompts={s['vt_prompts']}", f"prompt_tokens={s['prompt_tokens']}",
                                                  f"max_new_tokens={s['certify_tokens']}", "taus=[0.95,0.8,0.6]", "alphas=[0.1,0.2]",
                                                  f"n_splits={s['vt_splits']}", th]),
        ],
        "replay": [
            ("record", "record", [f"data.n_prompts={s['rec_prompts']}", f"data.prompt_tokens={s['prompt_tokens']}",
                                  f"max_new_tokens={s['tokens']}", f"probe_depth={s['probe_depth']}",
                                  f"cost_reps={s['cost_reps']}", th]),
            ("tune", "tune", ["policy=threshold", f"trace={trace}", f"study.n_trials={s['trials']}",
                              f"study.population_size={max(2, min(50, s['trials'] // 4))}",
                              f"study.remeasure_prompts={s['remeasure']}", f"study.remeasure_max={s['remeasure'] + 2}",
                              th]),
            ("replay_report", "replay_report", [f"trace={trace}", f"n_prompts={s['rr_prompts']}",
                                                f"cost_reps={max(1, s['cost_reps'])}",
                                                th]),
        ],
        "bench": [
            ("bench", "bench", [f"data.n_prompts={s['bench_prompts']}", f"data.prompt_tokens={s['prompt_tokens']}",
                                f"new_tokens={s['tokens']}", f"repeats={s['repeats']}", f"cost_depth={s['cost_depth']}",
                                th]),
        ],
    }


GROUPS = {"run": ("policy", "model", "drafter", "data", "decode", "experiment"), "calibrate": (),
          "validate_trust": (), "record": ("model", "drafter", "data"),
          "tune": ("policy", "model", "drafter", "data", "study"), "replay_report": ("model", "drafter"),
          "bench": ("model", "drafter", "data")}


def _execute(app: str):
    import importlib

    return importlib.import_module(f"experiments.{app}").execute


class Clock:
    """Prints each job's budget and elapsed time, and the recipe's running total against its total budget."""

    def __init__(self, total_budget: float):
        self.t0, self.total = time.monotonic(), total_budget

    def line(self, text: str) -> None:
        print(f"[paper {time.monotonic() - self.t0:7.1f}s / budget {self.total:.0f}s] {text}", flush=True)


def run_job(name: str, app: str, overrides: list[str], out: Path, budget: float, clock: Clock) -> Path:
    """One app job into ``out/name`` unless it is already complete (``.paper_done`` with the same overrides)."""
    d = out / name
    done = d / ".paper_done"
    if done.is_file() and json.loads(done.read_text()).get("overrides") == overrides:
        clock.line(f"{name}: complete, skipped")
        return d
    clock.line(f"{name}: python -m experiments.{app} {' '.join(overrides)}  (budget {budget:.0f}s)")
    t = time.monotonic()
    d.mkdir(parents=True, exist_ok=True)
    _execute(app)(compose(app, overrides, GROUPS[app]), d)
    took = time.monotonic() - t
    done.write_text(json.dumps({"overrides": overrides, "seconds": round(took, 1)}) + "\n")
    clock.line(f"{name}: done in {took:.1f}s (budget {budget:.0f}s)" + ("  OVER BUDGET" if took > budget else ""))
    return d


def total_budget(s: dict, out: Path) -> float:
    """Seconds the stages are allowed in all (printed at the start)."""
    b = s["budget"]
    jobs = [app for _, app, _ in run_jobs(s)] + [app for js in other_jobs(s, out).values() for _, app, _ in js]
    return sum(b[a] for a in jobs) + b["figures"] + b["numbers"]


def main(argv=None) -> int:
    """The command line (see the module docstring); 0 on success, 2 on bad input."""
    ap = argparse.ArgumentParser(prog="python -m experiments.recipes.paper", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="every stage on tiny settings (the test suite's)")
    ap.add_argument("--out", default=None, help="output root (default $PAPER_OUT, else the repository)")
    ap.add_argument("--only", nargs="*", choices=STAGES, default=None, help="run only these stages")
    a = ap.parse_args(argv)
    mode = "quick" if a.quick else "full"
    root = Path(a.out or os.environ.get("PAPER_OUT") or (REPO / "runs" / "paper_quick" if a.quick else REPO))
    s, out = SIZES[mode], root / "runs" / "paper"
    clock = Clock(total_budget(s, out))
    clock.line(f"mode {mode}, results in {out}, total budget {clock.total:.0f}s ({clock.total / 60:.1f} min)")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    stages = a.only or STAGES
    try:
        for stage in stages:
            jobs = run_jobs(s) if stage == "runs" else other_jobs(s, out).get(stage, [])
            for name, app, overrides in jobs:
                run_job(name, app, overrides, out, s["budget"][app], clock)
            if stage == "figures":
                from analysis.make_figures import make_figures

                t = time.monotonic()
                clock.line(f"figures: python -m analysis.make_figures {out} --out {root / 'paper/figures'} "
                           f"(budget {s['budget']['figures']}s)")
                make_figures([out], root / "paper" / "figures", log=lambda m: None)
                clock.line(f"figures: done in {time.monotonic() - t:.1f}s")
            if stage == "numbers":
                from analysis.paper_numbers import write_generated

                files = write_generated(out, root / "paper" / "generated", mode=mode)
                clock.line(f"numbers: wrote {len(files)} files to {root / 'paper/generated'}")
    except USER_ERRORS as err:
        print(f"paper: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    clock.line("all stages done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
