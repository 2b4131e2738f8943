"""What every app in ``experiments/`` shares, written once: the model/data/decode config groups, and the plumbing
that turns bad input into one line on stderr and exit code 2 before Hydra creates anything.

An app reads as: compose -> validate (into a resolved plan) -> call the library -> write files::

    @hydra.main(version_base="1.3", config_path="conf", config_name="record")
    def app(cfg):
        return run_task(cfg, execute)            # execute(cfg, run_dir); a UserError -> one line, exit 2

    def main():
        preflight("record", validate, groups)    # compose the command line and validate it, nothing written yet
        app()

``OMP_WAIT_POLICY=PASSIVE`` is set by the package (``experiments/__init__.py``), before any app imports torch.
"""

from __future__ import annotations

import difflib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

import specpolicy.calibration  # noqa: F401  (registers the policies that live outside policies/: calibrated)
from specpolicy.errors import UserError
from specpolicy.policies import PolicyParamError, UnknownPolicyError, list_policies, policy_class
from specpolicy.runs.checks import remove_if_empty

__all__ = ["CONF_DIR", "USER_ERRORS", "DataConf", "DecodeConf", "DrafterConf", "ModelConf", "TraceConf", "UserError", "check_choice",
           "check_recording", "compose", "fail", "one_line", "options", "parse_policy_spec", "policy_schema", "preflight", "record_into", "run_task"]

CONF_DIR = Path(__file__).parent / "conf"
USER_ERRORS = (UserError, PolicyParamError, UnknownPolicyError)  # one line and exit 2; anything else is a bug
MAX_PREFLIGHT = 64  # sweep combinations composed before launching (the rest are checked inside their jobs)


@dataclass
class ModelConf:
    path: str = "tiny"  # "tiny" (embedded), a checkpoint directory with MTP layers, or a hub id "org/name"
    device: str = "cpu"  # cpu | cuda | cuda:N | auto (cuda if available)
    dtype: Any = None  # float32 | float16 | bfloat16 | float64 | null (float32 on CPU, bfloat16 on CUDA)
    trust_remote_code: bool = False  # run code shipped with a hub checkpoint (only if you trust it)


@dataclass
class DrafterConf:
    name: str = "mtp"  # mtp | medusa | draft | ngram (conf/drafter/mtp_int8.yaml: mtp with path int8)
    path: str = ""  # medusa: heads directory, draft: a draft model (dir or hub id); "": the ones shipped beside the
    # model; mtp: "int8" for the MTP layers in int8 (drafter=mtp_int8)

    @property
    def spec(self) -> str:
        """The ``load_model(drafter=...)`` string."""
        return f"{self.name}:{self.path}" if self.path else self.name


@dataclass
class DataConf:
    name: str = "stdlib_test"  # stdlib_test | package | file
    n_prompts: int = 20  # file: 0 = every prompt of the file
    prompt_tokens: int = 64  # stdlib_test: tokens per prompt
    seed: int = 0  # stdlib_test: which prompts are drawn
    split: str = "test"  # stdlib_test: corpus split the prompts come from
    path: str = ""  # file: a .jsonl ({"prompt": ...} per line) or a text file (one prompt per line)
    package: str = "optuna"  # package: an installed package whose Python source the prompts come from (all held out)


@dataclass
class DecodeConf:
    temperature: float = 0.0  # 0: greedy; > 0: speculative sampling
    max_new_tokens: int = 96  # with 20 prompts: ar + fixed + threshold in < 2 min on 2 idle CPU cores
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int = 0  # sampling: prompt i uses seed + i, for every policy alike
    max_draft: int = 16  # hard cap on drafts per step, whatever the policy asks
    engine: str = "auto"  # auto | lean | packed | transformers (generate's engine; packed: CPU float32, README "Speed")


@dataclass
class TraceConf:
    """What a replay trace holds: N new tokens per prompt, the chain to depth K, the cost-curve repetitions."""

    max_new_tokens: int = 128
    probe_depth: int = 8  # K: drafts probed per position (replay serves policies up to this depth)
    cost_reps: int = 30  # repetitions per point of the cost curve (medians)
    engine: str = "auto"  # the decoder's engine for the recording and its cost model (replay_report decodes with it)


def check_recording(cfg) -> None:
    """The settings of a recording (``record_into``) as one-line ``UserError``s."""
    from specpolicy.decoding.engine import unknown_engine
    from specpolicy.runs import checks

    for ok, message in (
        (cfg.max_new_tokens >= 2, f"max_new_tokens={cfg.max_new_tokens} is invalid; allowed: an integer >= 2"),
        (1 <= cfg.probe_depth <= 32, f"probe_depth={cfg.probe_depth} is invalid; allowed: 1 <= probe_depth <= 32"),
        (cfg.cost_reps >= 1, f"cost_reps={cfg.cost_reps} is invalid; allowed: an integer >= 1"),
        (cfg.threads >= 1, f"threads={cfg.threads} is invalid; allowed: an integer >= 1"),
        (unknown_engine(cfg.get("engine", "auto")) is None, unknown_engine(cfg.get("engine", "auto"))),
    ):
        if not ok:
            raise UserError(message)
    checks.check_model(cfg.model)
    checks.drafter_spec(cfg.get("drafter") if hasattr(cfg, "get") else getattr(cfg, "drafter", None))
    checks.check_data(cfg.data)


def record_into(cfg, out: Path):
    """Record the trace that ``cfg`` (model, drafter, data, threads and the ``TraceConf`` fields) describes into ``out``:
    ``experiments.record`` does this, and ``experiments.tune`` when it is given no trace."""
    import torch
    from omegaconf import OmegaConf

    from specpolicy.decoding.engine import check_engine
    from specpolicy.replay.record import record_trace
    from specpolicy.runs import checks

    torch.set_num_threads(cfg.threads)
    drafter = cfg.get("drafter") if hasattr(cfg, "get") else getattr(cfg, "drafter", None)
    model = checks.load(cfg.model, drafter)
    engine = cfg.get("engine", "auto")
    check_engine(model, engine)
    prompts, data_info = checks.prompts_for(cfg.data, model.tokenizer)
    config = OmegaConf.to_container(OmegaConf.create({"model": cfg.model, "drafter": checks.drafter_spec(drafter),
                                                      "data": cfg.data, "trace": {
        "max_new_tokens": cfg.max_new_tokens, "probe_depth": cfg.probe_depth, "cost_reps": cfg.cost_reps,
        "engine": engine}}))
    trace = record_trace(model, [p.ids for p in prompts], cfg.max_new_tokens, cfg.probe_depth, cfg.cost_reps,
                         names=[p.id for p in prompts], engine=engine,
                         meta={"data": data_info, "config": config, "threads": cfg.threads,
                               "torch": torch.__version__})
    trace.save(out)
    return trace


def parse_policy_spec(spec: str):
    """``'threshold:{"tau_trust": 0.9}'`` -> (label ``threshold(tau_trust=0.9)``, policy); one-line ``UserError``
    for a bad name, parameter or JSON. The form the ``policies`` lists of bench and replay_report use."""
    import json

    from specpolicy.policies import PolicyParamError, UnknownPolicyError, get_policy

    name, _, raw = str(spec).partition(":")
    try:
        params = json.loads(raw) if raw else {}
        policy = get_policy(name, **params)
    except (UnknownPolicyError, PolicyParamError) as err:
        raise UserError(str(err)) from None
    except (json.JSONDecodeError, TypeError) as err:
        raise UserError(f"policy spec {spec!r}: parameters are not a JSON object ({err}); "
                        'allowed: name or name:{"param": value}') from None
    label = name + ("(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")
    return label, policy


def policy_schema(name: str) -> type:
    """A dataclass with ``name`` and the policy's ``__init__`` parameters (defaults from its signature): the schema
    of ``conf/policy/<name>.yaml``, so the YAML repeats no default.

    The fields are typed ``Any`` so that values reach ``get_policy``, whose range checks give the one-line errors.
    """
    params = inspect.signature(policy_class(name)).parameters.values()
    fields = [("name", Any, field(default=name))]
    fields += [(p.name, Any, field(default=p.default)) for p in params
               if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty]
    return make_dataclass(f"{policy_class(name).__name__}Conf", fields)


for _name in list_policies():
    ConfigStore.instance().store(group="schema/policy", name=_name, node=policy_schema(_name))


def fail(err: Exception | str) -> None:
    """The one stderr line and exit code 2 for input a user can fix."""
    print("error: " + " ".join(str(err).split()), file=sys.stderr)
    sys.exit(2)


def one_line(err: BaseException) -> str:
    """Hydra/OmegaConf error text (and its cause's first line) folded into one line, without the key dumps."""
    def lines(e: BaseException) -> list[str]:
        out = [ln.strip() for ln in str(e).split("Config search path:")[0].splitlines() if ln.strip()]
        return [ln for ln in out if not ln.startswith(("full_key:", "object_type=", "reference_type="))]

    text = "; ".join(lines(err)) or type(err).__name__
    cause = lines(err.__cause__)[:1] if err.__cause__ is not None else []
    return f"{text} ({cause[0]})" if cause else text


def options(group: str) -> list[str]:
    """The options of a config group: the YAML files in ``conf/<group>/``."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_choice(group: str, value: str) -> None:
    """A group option must exist; else a did-you-mean ``UserError`` (policies: the registry's own message)."""
    if group == "experiment" and value == "null":
        return
    if group == "policy":
        from specpolicy.policies import UnknownPolicyError, policy_class

        try:
            policy_class(value)
        except UnknownPolicyError as err:
            raise UserError(str(err)) from None
    allowed = options(group)
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=2, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ";"
        raise UserError(f"unknown {group} {value!r}{hint} allowed: {', '.join(allowed)}")


def _check_key(cfg: DictConfig, key: str) -> None:
    """A dotted override key must exist in the composed config; else a did-you-mean line with the allowed keys."""
    node, path = cfg, []
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            allowed = [".".join(path + [k]) for k in node] if isinstance(node, DictConfig) else []
            close = difflib.get_close_matches(".".join(path + [part]), allowed, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ";"
            raise UserError(f"unknown key {key!r}{hint} allowed: {', '.join(allowed)}")
        node, path = node[part], path + [part]


def compose(config_name: str, overrides: list[str], groups: tuple[str, ...] = ()) -> DictConfig:
    """The job config of ``overrides`` (Hydra's own included, e.g. ``hydra/launcher=joblib``), or a ``UserError``:
    unknown keys get a did-you-mean line, unknown policy parameters the registry's, other errors one line.
    ``groups``: the app's config groups (group overrides select options; other keys must exist)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from specpolicy.policies import PolicyParamError, get_policy

    parser = OverridesParser.create()
    parsed = [parser.parse_override(o) for o in overrides]
    keys = [o.key_or_group for o in parsed]
    for o in parsed:
        if o.key_or_group in groups and not o.is_delete() and not o.is_sweep_override():
            check_choice(o.key_or_group, o.get_value_element_as_str())
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=config_name):
        try:
            base = hydra_compose(config_name, overrides=[o for k, o in zip(keys, overrides) if k in groups])
            for k in keys:
                k = k.lstrip("+~")
                if k in groups or k == "hydra" or k.startswith(("hydra.", "hydra/")):
                    continue
                if k.startswith("policy.") and "policy" in base and k.split(".")[1] not in base.policy:
                    get_policy(base.policy.name, **{k.split(".")[1]: None})  # raises the registry's did-you-mean
                _check_key(base, k)
            return hydra_compose(config_name, overrides=overrides)
        except PolicyParamError as err:
            raise UserError(str(err)) from None
        except UserError:
            raise
        except Exception as err:  # hydra / omegaconf composition errors
            raise UserError(one_line(err)) from None


_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p"}  # flags whose value is the next argument
_SKIP_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--version", "--shell-completion", "-sc",
               "--experimental-rerun", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}


def _split_argv(argv: list[str]) -> tuple[list[str], bool] | None:
    """(overrides, multirun) from Hydra's command line; None when Hydra only prints help/info (nothing to check)."""
    overrides, multirun, it = [], False, iter(argv)
    for a in it:
        if a in _SKIP_FLAGS or a.split("=", 1)[0] in _SKIP_FLAGS:
            return None
        if a in ("-m", "--multirun"):
            multirun = True
        elif a in _VALUE_FLAGS:
            next(it, None)
        elif not a.startswith("-"):
            overrides.append(a)
    return overrides, multirun


def check_command_line(config_name: str, validate: Callable[[DictConfig], Any], argv: list[str],
                       groups: tuple[str, ...] = ()) -> None:
    """Compose and validate what Hydra is about to run (every sweep combination, up to ``MAX_PREFLIGHT``).

    Unknown group options get a did-you-mean line; unknown policy parameters the registry's line; Hydra's own
    composition errors are folded into one line. Raises ``UserError``.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    split = _split_argv(argv)
    if split is None:
        return
    overrides, multirun = split
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as err:  # hydra.errors.OverrideParseException
        raise UserError(one_line(err)) from None
    for o in parsed:
        if o.key_or_group in groups and not o.is_delete():
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            for v in values:
                check_choice(o.key_or_group, v)
    sweep = multirun and any(o.is_sweep_override() for o in parsed)
    combos = BasicSweeper.split_arguments(parsed, None)[0] if sweep else [overrides]
    for combo in combos[:MAX_PREFLIGHT]:
        validate(compose(config_name, combo, groups))


def preflight(config_name: str, validate: Callable[[DictConfig], Any], groups: tuple[str, ...] = (),
              argv: list[str] | None = None) -> None:
    """``check_command_line`` on ``sys.argv``; bad input -> one stderr line and exit 2, nothing written."""
    try:
        check_command_line(config_name, validate, sys.argv[1:] if argv is None else argv, groups)
    except USER_ERRORS as err:
        fail(err)


def run_task(cfg: DictConfig, execute: Callable[[DictConfig, Path], Any]) -> Any:
    """The body of a Hydra task: ``execute(cfg, run_dir)``; a ``UserError`` (or a policy's parameter error) removes
    the results directory Hydra made (if it holds nothing yet) and becomes one stderr line with exit code 2."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        return execute(cfg, run_dir)
    except USER_ERRORS as err:
        remove_if_empty(run_dir, log_name=f"{hc.job.name}.log")
        fail(err)
