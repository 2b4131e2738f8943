"""Tune a policy's thresholds with Optuna on a replay trace (a trial costs milliseconds), then re-measure for real.

    python -m experiments.tune policy=threshold                         # records a small trace first (20 prompts)
    python -m experiments.tune policy=threshold trace=runs/record/<dir>/trace.safetensors study.n_trials=500
    python -m experiments.tune policy=threshold study=constrained study.epsilon=0.01     # max speed s.t. error <= eps
    python -m experiments.tune policy=entropy study.speed_metric=tpf study.sampler=tpe
    python -m experiments.tune policy=threshold 'study.fixed_params={tau_trust: 1.0}'     # the lossless variant only
    python -m experiments.tune policy=threshold trace=T study.storage=journal:runs/thr.log study.name=thr study.seed=1
    python -m experiments.tune policy=threshold trace=T study.storage=postgresql://user@host/db study.name=thr
    python -m experiments.tune bench_replay=true trace=T                # replay speed of every policy (a benchmark)

Each policy's ``search_space(trial)`` defines its parameters; other parameters come from ``policy.<param>``.
``study.mode=multi`` maximises speed (``study.speed_metric``: ``speedup`` = modelled speedup vs ar from the trace's
cost model, or ``tpf``) and minimises the lossy error rate (NSGA-II by default, ``study.sampler=tpe|random``);
``study.mode=constrained`` maximises speed subject to error <= ``study.epsilon`` (``Trial.set_constraint``, which
Optuna 5's samplers read). Trials are evaluated by replay (``study.evaluator=replay``) or by real decoding of a few
prompts (``decode``). Storage: ``sqlite:///<run dir>/study.db`` by default (``optuna-dashboard`` opens it), any RDB
URL, or ``journal:<file>`` for several workers; a study with the same ``study.name`` is resumed. Several workers:
record a trace once and give each ``trace=...``, the same storage and name, and its own ``study.seed``.

Afterwards the Pareto set (multi) or the feasible front (constrained) is decoded for real on the shipped model
(``study.remeasure_prompts`` trace prompts, at most ``study.remeasure_max`` trials spread along the front) and
``pareto.csv`` (replayed vs real TPF / error / speedup), ``pareto.png``, ``trials.csv`` and ``summary.json`` are
written. Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: OpenMP busy-waiting makes CPU timings 10x noisier

import hashlib  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Optional  # noqa: E402 (OmegaConf structured configs need typing.Optional)

import hydra  # noqa: E402
import optuna  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from omegaconf import MISSING, DictConfig, OmegaConf  # noqa: E402

from experiments.record import TraceConf, UserError, fail, preflight, record_from_config  # noqa: E402
from experiments.record import validate as validate_record  # noqa: E402
from experiments.replay_report import bench_replay, remeasure_table, remeasure_trials  # noqa: E402
from experiments.run import DataConf, ModelConf  # noqa: E402  (also registers the policy schemas)
from specpolicy.policies import PolicyParamError, get_policy, list_policies, policy_class  # noqa: E402
from specpolicy.replay import Trace, TraceError, load_trace, replay  # noqa: E402

MODES, METRICS = ("multi", "constrained"), ("speedup", "tpf")
SAMPLERS, EVALUATORS = ("nsga2", "tpe", "random"), ("replay", "decode")
SPEED_KEY = {"speedup": "modelled_speedup", "tpf": "tpf"}
FIGURES = ("modelled_speedup", "lossy_token_rate", "mean_draft_len", "approximate", "depth_capped_steps")
RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")


@dataclass
class StudyConf:
    mode: str = "multi"  # multi: (max speed, min lossy error) | constrained: max speed s.t. error <= epsilon
    speed_metric: str = "speedup"  # speedup: modelled speedup vs ar (trace cost model) | tpf
    epsilon: float = 0.01  # constrained: the largest allowed lossy error rate
    sampler: str = "nsga2"  # nsga2 | tpe | random
    population_size: int = 50  # nsga2
    evaluator: str = "replay"  # replay: trace simulator | decode: real decoding of decode_prompts trace prompts
    decode_prompts: int = 3
    n_trials: int = 100  # trials this process runs
    max_trials: int = 0  # stop once the study (all workers) holds this many finished trials; 0: no cap
    timeout_s: Optional[float] = None  # noqa: UP045
    storage: str = ""  # "": sqlite:///<run dir>/study.db | an RDB URL | journal:<file>
    name: str = ""  # "": <policy>-<mode>-<speed_metric>; an existing study of this name is resumed
    seed: Optional[int] = 0  # noqa: UP045  sampler seed: give each worker its own
    fixed_params: Any = None  # {param: value}: pinned search parameters (PartialFixedSampler)
    remeasure_prompts: int = 5  # decode the front for real on this many trace prompts; 0: skip
    remeasure_max: int = 12  # at most this many front trials, spread along the front


@dataclass
class TuneConfig:
    policy: Any = MISSING  # {name: <registered policy>, <param>: value}: conf/policy/<name>.yaml
    model: ModelConf = field(default_factory=ModelConf)  # decode evaluator and re-measuring
    data: DataConf = field(default_factory=DataConf)  # prompts of the trace recorded when trace is ""
    record: TraceConf = field(default_factory=TraceConf)
    study: StudyConf = field(default_factory=StudyConf)
    trace: str = ""  # a trace from experiments.record; "": record one into the run directory first
    max_new_tokens: int = 0  # replay horizon; 0: the trace's N
    threads: int = 2
    bench_replay: bool = False  # time replay of every registered policy on the trace, then exit


ConfigStore.instance().store(name="tune_schema", node=TuneConfig)


# ---------------------------------------------------------------- checks (before Hydra creates anything)

def space_names(name: str) -> list[str]:
    """The parameter names ``policy_class(name).search_space`` suggests (asked on a throwaway in-memory study)."""
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    policy_class(name).search_space(trial)
    return list(trial.params)


def validate(cfg) -> None:
    s = cfg.study
    for ok, message in (
        (s.mode in MODES, f"study.mode={s.mode} is unknown; allowed: {', '.join(MODES)}"),
        (s.speed_metric in METRICS, f"study.speed_metric={s.speed_metric} is unknown; allowed: {', '.join(METRICS)}"),
        (s.sampler in SAMPLERS, f"study.sampler={s.sampler} is unknown; allowed: {', '.join(SAMPLERS)}"),
        (s.evaluator in EVALUATORS, f"study.evaluator={s.evaluator} is unknown; allowed: {', '.join(EVALUATORS)}"),
        (0 <= s.epsilon <= 1, f"study.epsilon={s.epsilon} is invalid; allowed: 0 <= epsilon <= 1"),
        (s.n_trials >= 1, f"study.n_trials={s.n_trials} is invalid; allowed: an integer >= 1"),
        (s.max_trials >= 0, f"study.max_trials={s.max_trials} is invalid; allowed: 0 (no cap) or >= 1"),
        (s.population_size >= 2, f"study.population_size={s.population_size} is invalid; allowed: >= 2"),
        (s.decode_prompts >= 1, f"study.decode_prompts={s.decode_prompts} is invalid; allowed: >= 1"),
        (s.remeasure_prompts >= 0, f"study.remeasure_prompts={s.remeasure_prompts} is invalid; allowed: >= 0"),
        (s.remeasure_max >= 1, f"study.remeasure_max={s.remeasure_max} is invalid; allowed: >= 1"),
        (cfg.max_new_tokens >= 0, f"max_new_tokens={cfg.max_new_tokens} is invalid; allowed: 0 (trace's) or >= 1"),
        (cfg.threads >= 1, f"threads={cfg.threads} is invalid; allowed: an integer >= 1"),
    ):
        if not ok:
            raise UserError(message)
    storage_kind(s.storage)
    name = cfg.policy.name
    names = space_names(name)
    if not names and not cfg.bench_replay:
        tunable = [n for n in list_policies() if space_names(n)]
        raise UserError(f"policy {name} has no parameters to tune (empty search_space); allowed: {', '.join(tunable)}")
    fixed = s.fixed_params or {}
    if not isinstance(fixed, dict | DictConfig):
        raise UserError(f"study.fixed_params={fixed!r} is invalid; allowed: a mapping such as {{tau_trust: 1.0}}")
    unknown = [k for k in fixed if k not in names]
    if unknown:
        raise UserError(f"study.fixed_params: {', '.join(unknown)} not in {name}'s search space; allowed: "
                        f"{', '.join(names)}")
    try:
        get_policy(name, **{**base_params(cfg), **dict(fixed)})
    except PolicyParamError as err:
        raise UserError(str(err)) from None
    if not cfg.trace:
        validate_record(recording_config(cfg))


def recording_config(cfg) -> DictConfig:
    """What ``experiments.record`` needs (TraceConf fields, model, data, threads) from a tune config."""
    return OmegaConf.create({**OmegaConf.to_container(cfg.record), "model": cfg.model, "data": cfg.data,
                             "threads": cfg.threads})


def base_params(cfg) -> dict:
    return {k: v for k, v in OmegaConf.to_container(cfg.policy, resolve=True).items() if k != "name"}


def storage_kind(spec: str) -> str:
    """"sqlite" (default file in the run dir), "rdb" (URL) or "journal"; one-line ``UserError`` otherwise."""
    allowed = "allowed: '' (sqlite in the run dir), an RDB URL (postgresql://user@host/db, sqlite:///file.db) or " \
              "journal:<file>"
    if not spec:
        return "sqlite"
    if spec.startswith("journal:"):
        if not spec[len("journal:"):]:
            raise UserError(f"study.storage={spec} names no file; {allowed}")
        return "journal"
    scheme = spec.split("://", 1)[0].split("+", 1)[0] if "://" in spec else None
    if scheme not in RDB_SCHEMES:
        raise UserError(f"study.storage={spec} is not a storage; {allowed}")
    return "rdb"


# ---------------------------------------------------------------- the study

def open_storage(spec: str, run_dir: Path):
    """(storage object, printable location) for ``study.storage``; connection failures are one-line errors."""
    kind = storage_kind(spec)
    try:
        if kind == "journal":
            path = Path(spec[len("journal:"):]).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
            return optuna.storages.JournalStorage(backend), f"journal:{path}"
        url = f"sqlite:///{run_dir / 'study.db'}" if kind == "sqlite" else _pg_driver(spec)
        from sqlalchemy.engine import make_url

        storage = _rdb_storage(url)
        if url.startswith("sqlite"):
            _sqlite_wal(storage)
        return storage, make_url(url).render_as_string(hide_password=True)
    except Exception as err:  # driver missing, server down, bad credentials, unwritable file
        why: list[str] = []
        for e in (err, err.__cause__):
            line = str(e).strip().splitlines()[0] if e is not None and str(e).strip() else ""
            if line and not any(line in w or w in line for w in why):
                why.append(line)
        raise UserError(f"study.storage: cannot open {spec or 'sqlite in the run dir'}: "
                        f"{'; '.join(why) or type(err).__name__}") from None


def _rdb_storage(url: str, attempts: int = 5):
    """``RDBStorage(url)``, retried when workers starting together race to create the schema: PostgreSQL's
    ``CREATE TABLE`` then fails in the loser with a unique violation on ``pg_type`` (or "already exists")."""
    import random

    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


def _pg_driver(url: str) -> str:
    """``postgres://`` -> ``postgresql://``; and since SQLAlchemy 2.1 maps plain ``postgresql://`` to psycopg 3, name
    psycopg2 when only that driver is installed (the dev extra's psycopg2-binary)."""
    import importlib.util

    scheme, _, rest = url.partition("://")
    if scheme in ("postgresql", "postgres"):
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return f"postgresql+psycopg2://{rest}"
        return f"postgresql://{rest}"
    return url


def _sqlite_wal(storage) -> None:
    """WAL journal + synchronous=NORMAL: a trial's ~8 small writes stop paying one fsync each (2-3x faster trials on
    a busy disk); readers such as optuna-dashboard still see a consistent database."""
    from sqlalchemy import event

    def on_connect(con, _record):
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened before the listener reconnect with it


def make_sampler(s):
    if s.sampler == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=s.seed, population_size=s.population_size)
    elif s.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=s.seed, multivariate=True)
    else:
        sampler = optuna.samplers.RandomSampler(seed=s.seed)
    fixed = OmegaConf.to_container(s.fixed_params) if isinstance(s.fixed_params, DictConfig) else s.fixed_params
    return optuna.samplers.PartialFixedSampler(dict(fixed), sampler) if fixed else sampler


def trace_fingerprint(trace: Trace) -> str:
    h = hashlib.sha256(str(trace.meta.get("model_fingerprint")).encode())
    for a in (trace.tokens, trace.draft, trace.q):
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def open_study(cfg, storage, trace: Trace) -> optuna.Study:
    s = cfg.study
    directions = ["maximize", "minimize"] if s.mode == "multi" else ["maximize"]
    name = s.name or f"{cfg.policy.name}-{s.mode}-{s.speed_metric}"
    study = optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=make_sampler(s),
                                load_if_exists=True)
    if [d.name.lower() for d in study.directions] != directions:
        raise UserError(f"study {name!r} exists with {len(study.directions)} objective(s), not study.mode={s.mode}; "
                        "allowed: the same mode, or another study.name")
    attrs = {"policy": cfg.policy.name, "mode": s.mode, "speed_metric": s.speed_metric, "evaluator": s.evaluator,
             "trace": trace_fingerprint(trace), "max_new_tokens": cfg.max_new_tokens or trace.max_new_tokens}
    if s.mode == "constrained":
        attrs["epsilon"] = s.epsilon
    for k, v in attrs.items():
        old = study.user_attrs.get(k)
        if old is not None and old != v:
            raise UserError(f"study {name!r} was run with {k}={old}, not {v}; allowed: the same settings to resume, "
                            "or another study.name")
        if old is None:
            study.set_user_attr(k, v)
    return study


def make_objective(cfg, evaluate):
    s, name, base = cfg.study, cfg.policy.name, base_params(cfg)
    cls = policy_class(name)

    def objective(trial: optuna.Trial):
        params = {**base, **cls.search_space(trial)}
        summary = evaluate(get_policy(name, **params))
        # three user attributes (each is one storage write): the two the front and the figure read, the rest
        trial.set_user_attr("lossy_error_rate", summary["lossy_error_rate"])
        trial.set_user_attr("tpf", summary["tpf"])
        trial.set_user_attr("figures", {**{k: summary[k] for k in FIGURES}, "policy_params": params})
        speed, err = summary[SPEED_KEY[s.speed_metric]], summary["lossy_error_rate"]
        if s.mode == "multi":
            return speed, err
        trial.set_constraint("lossy_error_rate", err - s.epsilon)
        return speed

    return objective


def make_evaluator(cfg, trace: Trace, model=None):
    max_new = cfg.max_new_tokens or trace.max_new_tokens
    if cfg.study.evaluator == "replay":
        return lambda policy: replay(policy, trace, max_new_tokens=max_new).summary
    from specpolicy import generate
    from specpolicy.replay import summarise_generations

    sub = trace.select(range(min(cfg.study.decode_prompts, trace.n_prompts)))

    def decode(policy):
        res = [generate(model, list(ids), policy, max_new_tokens=max_new, max_draft=trace.k_max)
               for ids in sub.prompt_ids]
        return summarise_generations(res, trace.cost, trace.k_max, lossless=policy.lossless)

    return decode


def front_trials(study: optuna.Study, mode: str, epsilon: float) -> list:
    """multi: Optuna's Pareto set; constrained: the non-dominated (speed, error) trials among the feasible ones.
    Duplicate parameter sets are kept once; sorted by error, then speed (descending)."""
    from analysis.pareto import pareto_mask

    if mode == "multi":
        trials = study.best_trials
    else:
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        feas = [t for t in done if t.user_attrs.get("lossy_error_rate", 1) <= epsilon]
        mask = pareto_mask([t.value for t in feas], [t.user_attrs["lossy_error_rate"] for t in feas])
        trials = [t for t, keep in zip(feas, mask) if keep]
    seen, out = set(), []
    for t in sorted(trials, key=lambda t: (t.user_attrs["lossy_error_rate"], -t.values[0], t.number)):
        key = json.dumps(t.params, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def spread(items: list, k: int) -> list:
    if len(items) <= k:
        return list(items)
    step = (len(items) - 1) / (k - 1) if k > 1 else 0
    return [items[round(i * step)] for i in range(k)] if k > 1 else items[:1]


def front_table(trials: list, metric: str) -> str:
    lines = [f"{'trial':>6}  {metric:>8}  {'error':>7}  {'tpf':>6}  params"]
    for t in trials:
        u = t.user_attrs
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        lines.append(f"{t.number:>6}  {t.values[0]:>8.3f}  {u['lossy_error_rate']:>7.4f}  {u['tpf']:>6.3f}  {params}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the app

def get_trace(cfg, run_dir: Path) -> Trace:
    if not cfg.trace:
        print(f"recording a trace ({cfg.data.n_prompts} prompts x {cfg.record.max_new_tokens} tokens, "
              f"K={cfg.record.probe_depth}) into {run_dir}")
        return record_from_config(recording_config(cfg), run_dir / "trace.safetensors")
    try:
        trace = load_trace(cfg.trace)
    except TraceError as err:
        raise UserError(str(err)) from None
    if cfg.max_new_tokens > trace.max_new_tokens:
        raise UserError(f"max_new_tokens={cfg.max_new_tokens} exceeds the trace's {trace.max_new_tokens}; "
                        "allowed: 0 (the trace's) or less")
    return trace


def run_tune(cfg, run_dir: Path) -> dict:
    """Trace -> study -> front -> re-measure -> files. ``UserError`` for anything a user can fix."""
    import torch

    from analysis.pareto import plot_pareto

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    trace = get_trace(cfg, run_dir)
    if cfg.bench_replay:
        return bench_replay(trace, run_dir)
    s = cfg.study
    model = None
    if s.evaluator == "decode" or s.remeasure_prompts:
        from experiments.replay_report import check_model_matches
        from specpolicy.runs import checks

        try:
            model = checks.load(cfg.model)
        except checks.UserError as err:
            raise UserError(str(err)) from None
        check_model_matches(model, trace)
    storage, where = open_storage(s.storage, run_dir)
    study = open_study(cfg, storage, trace)
    callbacks = []
    if s.max_trials:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
        callbacks.append(optuna.study.MaxTrialsCallback(s.max_trials, states=states))
    print(f"study {study.study_name!r} in {where}: {s.mode}, speed = {s.speed_metric}, evaluator = {s.evaluator}, "
          f"{len(study.trials)} trials already")
    t0 = time.perf_counter()
    study.optimize(make_objective(cfg, make_evaluator(cfg, trace, model)), n_trials=s.n_trials, timeout=s.timeout_s,
                   callbacks=callbacks, show_progress_bar=True, gc_after_trial=False)
    study_s = time.perf_counter() - t0
    study.trials_dataframe().to_csv(run_dir / "trials.csv", index=False)
    front = front_trials(study, s.mode, s.epsilon)
    n_done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    print(f"\n{n_done} complete trials in the study; this process ran {s.n_trials} in {study_s:.1f} s "
          f"({1e3 * study_s / s.n_trials:.1f} ms per trial)")
    how = "replayed" if s.evaluator == "replay" else f"decoded on {s.decode_prompts} prompts"
    print(f"Pareto front ({len(front)} trials; speed = {s.speed_metric}, error = lossy error rate, {how}):")
    print(front_table(front, s.speed_metric))
    chosen = spread(front, s.remeasure_max)
    if s.remeasure_prompts and chosen:
        print(f"\nre-measuring {len(chosen)} front trials by real decoding on {s.remeasure_prompts} prompts ...")
        rows = remeasure_trials(cfg.policy.name, chosen, trace, model, s.remeasure_prompts)
        print(remeasure_table(rows))
    else:
        rows = [{"trial": t.number, "params": json.dumps(t.params, sort_keys=True), "objective_speed": t.values[0],
                 "objective_error": t.user_attrs["lossy_error_rate"], "objective_tpf": t.user_attrs["tpf"]}
                for t in chosen]
    import pandas as pd

    pd.DataFrame(rows).to_csv(run_dir / "pareto.csv", index=False)
    png = plot_pareto(run_dir, speed_metric=s.speed_metric)
    summary = {"study": study.study_name, "storage": where, "mode": s.mode, "speed_metric": s.speed_metric,
               "evaluator": s.evaluator, "trials_complete": n_done, "trials_this_process": s.n_trials,
               "study_s": study_s, "front": [t.number for t in front], "remeasured": rows,
               "trace": {"path": cfg.trace or str(run_dir / "trace.safetensors"), "prompts": trace.n_prompts,
                         "max_new_tokens": trace.max_new_tokens, "k_max": trace.k_max,
                         "cost": trace.cost.to_dict(), "model": trace.meta.get("model_fingerprint")}}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"results: {run_dir} (pareto.csv, {png.name}, trials.csv, summary.json)")
    return summary


@hydra.main(version_base="1.3", config_path="conf", config_name="tune")
def app(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from specpolicy.runs.checks import remove_if_empty

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return run_tune(cfg, run_dir)
    except UserError as err:
        remove_if_empty(run_dir, log_name=f"{hc.job.name}.log")
        fail(str(err))


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    preflight("tune", ("policy", "model", "data", "study"), validate)
    app()


if __name__ == "__main__":
    main()
