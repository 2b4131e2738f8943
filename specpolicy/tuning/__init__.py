"""Tuning a policy's parameters with Optuna, by trace replay (milliseconds a trial) or real decoding.

    study      ``StudyConf``, checks, the sampler, the objective and evaluator, opening/resuming a study
    storage    sqlite / RDB / journal storages with one-line errors
    front      the Pareto (or feasible) front and its re-measurement by real decoding

Run it with ``python -m experiments.tune``; everything here is importable for a study of one's own.

Example:
    >>> from specpolicy.tuning import StudyConf, open_storage, open_study, make_objective, make_evaluator
    >>> conf = StudyConf(n_trials=200)
    >>> study = open_study(open_storage("", run_dir)[0], conf, "threshold", trace, trace.max_new_tokens)
    >>> study.optimize(make_objective(conf, "threshold", {}, make_evaluator(conf, trace, trace.max_new_tokens)),
    ...                n_trials=conf.n_trials)
"""

from .front import front_table, front_trials, remeasure_table, remeasure_trials, spread
from .storage import StudyError, open_storage, storage_kind
from .study import (
    EVALUATORS,
    FIGURES,
    METRICS,
    MODES,
    OBJECTIVE_VERSION,
    SAMPLERS,
    SPEED_KEY,
    StudyConf,
    check_study,
    make_evaluator,
    make_objective,
    make_sampler,
    open_study,
    space_names,
    trace_fingerprint,
)

__all__ = [
    "EVALUATORS", "FIGURES", "METRICS", "MODES", "OBJECTIVE_VERSION", "SAMPLERS", "SPEED_KEY", "StudyConf",
    "StudyError", "check_study", "front_table", "front_trials", "make_evaluator", "make_objective", "make_sampler",
    "open_storage", "open_study", "remeasure_table", "remeasure_trials", "space_names", "spread", "storage_kind",
    "trace_fingerprint",
]
