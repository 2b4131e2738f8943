"""An Optuna study over a policy's parameters: the settings (``StudyConf``), the sampler, the objective, and opening
(or resuming) a study that refuses to mix trials of another objective definition or package version.

Objectives (``study.mode``): ``multi`` maximises speed and minimises the lossy error rate; ``constrained`` maximises
speed subject to error <= epsilon (``Trial.set_constraint``, which Optuna 5's samplers read). Speed is
``modelled_speedup`` (the trace's cost model) or ``tpf``. Trials are evaluated by replaying a trace or by real
decoding of a few of its prompts.

Example:
    >>> storage, _ = open_storage("", run_dir)
    >>> study = open_study(storage, conf, "threshold", trace, max_new_tokens=128)
    >>> study.optimize(make_objective(conf, "threshold", {}, make_evaluator(conf, trace, 128)), n_trials=100)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

import optuna

from specpolicy._version import __version__
from specpolicy.policies import PolicyParamError, get_policy, list_policies, policy_class, with_step_cost

from .storage import StudyError, storage_kind

__all__ = ["EVALUATORS", "FIGURES", "METRICS", "MODES", "OBJECTIVE_VERSION", "SAMPLERS", "SPEED_KEY", "StudyConf",
           "check_study", "make_evaluator", "make_objective", "make_sampler", "open_study", "space_names",
           "trace_fingerprint"]

MODES, METRICS = ("multi", "constrained"), ("speedup", "tpf")
SAMPLERS, EVALUATORS = ("nsga2", "tpe", "random"), ("replay", "decode")
SPEED_KEY = {"speedup": "modelled_speedup", "tpf": "tpf"}
FIGURES = ("modelled_speedup", "lossy_token_rate", "mean_draft_len", "approximate", "depth_capped_steps")
# Bump when what a trial's values mean changes (the objective's figures or how they are computed): a resumed study
# refuses trials of another definition rather than mixing them on one front.
OBJECTIVE_VERSION = 2


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
    timeout_s: Optional[float] = None  # noqa: UP045 (OmegaConf structured configs need typing.Optional)
    storage: str = ""  # "": sqlite:///<run dir>/study.db | an RDB URL | journal:<file>
    name: str = ""  # "": <policy>-<mode>-<speed_metric>; an existing study of this name is resumed
    seed: Optional[int] = 0  # noqa: UP045  sampler seed: give each worker its own
    fixed_params: Any = None  # {param: value}: pinned search parameters (PartialFixedSampler)
    remeasure_prompts: int = 5  # decode the front for real on this many trace prompts; 0: skip
    remeasure_max: int = 12  # at most this many front trials, spread along the front


def space_names(name: str) -> list[str]:
    """The parameter names ``policy_class(name).search_space`` suggests (asked on a throwaway in-memory study)."""
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    policy_class(name).search_space(trial)
    return list(trial.params)


def _plain(mapping) -> dict:
    if mapping is None:
        return {}
    if hasattr(mapping, "_metadata"):  # an OmegaConf DictConfig
        from omegaconf import OmegaConf

        return OmegaConf.to_container(mapping, resolve=True)
    return dict(mapping)


def check_study(s, policy: str, base_params: Mapping, need_space: bool = True) -> None:
    """Every study setting a user can get wrong, as one-line ``StudyError``s (``s``: a ``StudyConf``-like node)."""
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
    ):
        if not ok:
            raise StudyError(message)
    storage_kind(s.storage)
    names = space_names(policy)
    if not names and need_space:
        tunable = [n for n in list_policies() if space_names(n)]
        raise StudyError(f"policy {policy} has no parameters to tune (empty search_space); allowed: "
                         f"{', '.join(tunable)}")
    fixed = s.fixed_params if s.fixed_params is not None else {}
    if not (isinstance(fixed, Mapping) or hasattr(fixed, "_metadata") and hasattr(fixed, "items")):
        raise StudyError(f"study.fixed_params={fixed!r} is invalid; allowed: a mapping such as {{tau_trust: 1.0}}")
    fixed = _plain(fixed)
    unknown = [k for k in fixed if k not in names]
    if unknown:
        raise StudyError(f"study.fixed_params: {', '.join(unknown)} not in {policy}'s search space; allowed: "
                         f"{', '.join(names)}")
    try:
        get_policy(policy, **{**dict(base_params), **fixed})
    except PolicyParamError as err:
        raise StudyError(str(err)) from None


def make_sampler(s) -> optuna.samplers.BaseSampler:
    """NSGA-II, TPE (multivariate) or random, seeded; pinned ``fixed_params`` through ``PartialFixedSampler``."""
    if s.sampler == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=s.seed, population_size=s.population_size)
    elif s.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=s.seed, multivariate=True)
    else:
        sampler = optuna.samplers.RandomSampler(seed=s.seed)
    fixed = _plain(s.fixed_params)
    return optuna.samplers.PartialFixedSampler(fixed, sampler) if fixed else sampler


def trace_fingerprint(trace) -> str:
    """Short hash of what a replayed objective depends on: the trace's model, tokens, drafts and confidences."""
    h = hashlib.sha256(str(trace.meta.get("model_fingerprint")).encode())
    for a in (trace.tokens, trace.draft, trace.q):
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def open_study(storage, s, policy: str, trace, max_new_tokens: int) -> optuna.Study:
    """Create or resume the study; a resumed one must have the same objective, settings, trace, objective
    definition (``OBJECTIVE_VERSION``) and package version, else one-line ``StudyError``."""
    directions = ["maximize", "minimize"] if s.mode == "multi" else ["maximize"]
    name = s.name or f"{policy}-{s.mode}-{s.speed_metric}"
    study = optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=make_sampler(s),
                                load_if_exists=True)
    if [d.name.lower() for d in study.directions] != directions:
        raise StudyError(f"study {name!r} exists with {len(study.directions)} objective(s), not study.mode={s.mode}; "
                         "allowed: the same mode, or another study.name")
    attrs = {"policy": policy, "mode": s.mode, "speed_metric": s.speed_metric, "evaluator": s.evaluator,
             "trace": trace_fingerprint(trace), "max_new_tokens": max_new_tokens,
             "objective_version": OBJECTIVE_VERSION, "specpolicy_version": __version__}
    if s.mode == "constrained":
        attrs["epsilon"] = s.epsilon
    fresh = not study.trials
    for k, v in attrs.items():
        old = study.user_attrs.get(k)
        if old is None and not fresh and k in ("objective_version", "specpolicy_version"):
            old = "unrecorded (an older study)"
        if old is not None and old != v:
            raise StudyError(f"study {name!r} was run with {k}={old}, not {v}; allowed: the same settings to "
                             "resume, or another study.name")
        if old is None:
            study.set_user_attr(k, v)
    return study


def make_objective(s, policy: str, base_params: Mapping, evaluate: Callable[[Any], dict]):
    """The Optuna objective: parameters from the policy's ``search_space`` (over ``base_params``), evaluated."""
    cls = policy_class(policy)

    def objective(trial: optuna.Trial):
        params = {**base_params, **cls.search_space(trial)}
        summary = evaluate(get_policy(policy, **params))
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


def make_evaluator(s, trace, max_new_tokens: int, model=None) -> Callable[[Any], dict]:
    """policy -> summary: replay over the whole trace, or real decoding of its first ``s.decode_prompts`` prompts."""
    from specpolicy.replay import replay, summarise_generations

    if s.evaluator == "replay":
        return lambda policy: replay(policy, trace, max_new_tokens=max_new_tokens).summary
    from specpolicy.decoding import generate

    sub = trace.select(range(min(s.decode_prompts, trace.n_prompts)))

    def decode(policy):
        policy = with_step_cost(policy, trace.cost)  # the numbers the replay of this trace would use
        res = [generate(model, list(ids), policy, max_new_tokens=max_new_tokens, max_draft=trace.k_max)
               for ids in sub.prompt_ids]
        return summarise_generations(res, trace.cost, trace.k_max, lossless=policy.lossless)

    return decode
