"""The first command: decode prompts with a speculation policy and measure it against ar and fixed baselines.

    python -m experiments.run policy=threshold                        # defaults: tiny model, 20 stdlib prompts
    python -m experiments.run policy=threshold policy.tau_trust=0.95  # lossy: trust confident drafts
    python -m experiments.run policy=fixed policy.k=4 decode=sampling
    python -m experiments.run --multirun policy=fixed,threshold hydra/launcher=joblib
    python -m experiments.run --help                                  # groups, options, every parameter

Each prompt is decoded by every policy in turn (the requested one plus ``ar`` and ``fixed`` unless
``baselines=false``), so machine-load drift hits them alike. Results land in Hydra's run directory
(``hydra.run.dir=...``): ``records.jsonl`` (appended atomically; the same command with the same ``hydra.run.dir``
resumes a killed run), ``steps.parquet``, ``summary.json`` (see ``specpolicy.metrics.summary``),
``environment.json``, ``config.yaml`` and ``overview.png``.

Bad input (unknown policy/model/data option, a parameter out of range, a missing file, ...) is one line on stderr and
exit code 2, checked before Hydra creates a results directory. ``OMP_WAIT_POLICY=PASSIVE`` is set below before torch
is imported (unless already set): on a loaded CPU, OpenMP's busy-waiting makes multi-token forwards ~10x slower.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first torch import (via specpolicy)

import hashlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass, field, make_dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import hydra  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from omegaconf import MISSING, DictConfig, OmegaConf  # noqa: E402

import specpolicy.calibration  # noqa: E402,F401  (registers the policies that live outside policies/: calibrated)
from specpolicy.policies import list_policies, policy_class  # noqa: E402
from specpolicy.runs import checks  # noqa: E402
from specpolicy.runs.arms import REFERENCE, Arm, rotate  # noqa: E402

CONF_DIR = Path(__file__).parent / "conf"


@dataclass
class ModelConf:
    path: str = "tiny"  # "tiny" (embedded), a checkpoint directory with MTP layers, or a hub id "org/name"
    device: str = "cpu"  # cpu | cuda | cuda:N | auto (cuda if available)
    dtype: Any = None  # float32 | float16 | bfloat16 | null (float32 on CPU, bfloat16 on CUDA)


@dataclass
class DataConf:
    name: str = "stdlib_test"  # stdlib_test | file
    n_prompts: int = 20  # file: 0 = every prompt of the file
    prompt_tokens: int = 64  # stdlib_test: tokens per prompt
    seed: int = 0  # stdlib_test: which prompts are drawn
    split: str = "test"  # stdlib_test: corpus split the prompts come from
    path: str = ""  # file: a .jsonl ({"prompt": ...} per line) or a text file (one prompt per line)


@dataclass
class DecodeConf:
    temperature: float = 0.0  # 0: greedy; > 0: speculative sampling
    max_new_tokens: int = 96  # with 20 prompts: ar + fixed + threshold in < 2 min on 2 idle CPU cores
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int = 0  # sampling: prompt i uses seed + i, for every policy alike
    max_draft: int = 16  # hard cap on drafts per step, whatever the policy asks


@dataclass
class RunConfig:
    policy: Any = MISSING  # {name: <registered policy>, <param>: value ...}: one file per policy in conf/policy/
    model: ModelConf = field(default_factory=ModelConf)
    data: DataConf = field(default_factory=DataConf)
    decode: DecodeConf = field(default_factory=DecodeConf)
    baselines: bool = True  # also decode ar and fixed(k) on the same prompts (speedup and quality reference)
    threads: int = 2  # torch.set_num_threads
    nll: bool = True  # score every output with one teacher-forced target forward (target_nll)
    bootstrap: int = 2000  # bootstrap resamples for the 95% intervals in summary.json
    figure: bool = True  # write overview.png


def policy_schema(name: str) -> type:
    """A dataclass with ``name`` and the policy's ``__init__`` parameters (defaults from its signature).

    The fields are typed ``Any`` so that values reach ``get_policy``, whose range checks give the one-line errors.
    """
    params = inspect.signature(policy_class(name)).parameters.values()
    fields = [("name", Any, field(default=name))]
    fields += [(p.name, Any, field(default=p.default)) for p in params
               if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty]
    return make_dataclass(f"{policy_class(name).__name__}Conf", fields)


cs = ConfigStore.instance()
cs.store(name="run_schema", node=RunConfig)
for _name in list_policies():
    cs.store(group="schema/policy", name=_name, node=policy_schema(_name))


def _run_key(cfg: DictConfig) -> str:
    """Hash of what makes records comparable: model, data and decode settings (not threads, not the policy)."""
    keep = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "decode")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _record(prompt, index: int, arm: Arm, res, run_key: str, nll: tuple[float, int] | None) -> dict:
    from specpolicy.metrics import acceptance_counts

    reached, ok = acceptance_counts([s.verdicts for s in res.steps])
    rec = {
        "prompt_id": prompt.id, "prompt_index": index, "policy": arm.label, "name": arm.name, "params": arm.params,
        "role": arm.role, "run_key": run_key, "prompt_len": len(prompt.ids), "token_ids": list(res.token_ids),
        "text": res.text, "provenance": list(res.provenance), "finished_by": res.finished_by,
        "stats": res.stats.to_dict(), "accept_reached": reached, "accept_ok": ok,
    }
    if nll is not None:
        rec["nll_sum"], rec["nll_tokens"] = nll
    return rec


def decode_all(cfg: DictConfig, arms: list[Arm], model, prompts, store, run_key: str) -> None:
    """Every (prompt, policy) pair not yet in ``store``: prompts in order, policies rotated per prompt."""
    from tqdm.auto import tqdm

    from specpolicy import generate
    from specpolicy.runs import step_rows, target_nll

    d = cfg.decode
    kw = dict(max_new_tokens=d.max_new_tokens, temperature=d.temperature, top_p=d.top_p, top_k=d.top_k,
              max_draft=d.max_draft)
    todo = [(i, p) for i, p in enumerate(prompts) if any((p.id, a.label) not in store.done for a in arms)]
    if todo:  # warm-up (not recorded): first calls pay for lazy initialisation, which would bias the first policy
        for a in arms:
            generate(model, list(todo[0][1].ids), a.policy(), **dict(kw, max_new_tokens=min(8, d.max_new_tokens)))
    for i, p in tqdm(todo, desc="prompts", unit="prompt", dynamic_ncols=True):
        for a in rotate(arms, i):
            if (p.id, a.label) in store.done:
                continue
            res = generate(model, list(p.ids), a.policy(), seed=d.seed + i, **kw)
            nll = target_nll(model, res.prompt_ids, res.token_ids) if cfg.nll else None
            store.add(_record(p, i, a, res, run_key, nll), step_rows(p.id, a.label, [s.to_dict() for s in res.steps]))


def finish(cfg: DictConfig, arms: list[Arm], store, run_dir: Path) -> dict:
    """steps.parquet, summary.json, overview.png and the console table, from the records on disk."""
    from specpolicy.metrics import summarise_run
    from specpolicy.runs import write_steps_parquet
    from specpolicy.runs.report import console_table

    write_steps_parquet(store, run_dir / "steps.parquet")
    labels = {a.label: {"name": a.name, "params": a.params, "role": a.role, "lossless": a.lossless} for a in arms}
    records = [r for r in store.records if r["policy"] in labels]
    summary = summarise_run(records, reference=REFERENCE, sampling=cfg.decode.temperature > 0,
                            n_resamples=cfg.bootstrap, seed=0, policies=labels)
    summary["run_dir"] = str(run_dir)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if cfg.figure:
        from analysis.run_overview import plot_run_overview

        plot_run_overview(run_dir)
    print(console_table(summary))
    print(f"results: {run_dir}")
    return summary


_MODELS: dict[tuple, object] = {}


def _model(path: str, device: str, dtype):
    """Load once per process: the jobs of a --multirun sweep on the basic launcher share one process."""
    key = (path, device, dtype)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = checks.load(ModelConf(path, device, dtype))
    return _MODELS[key]


def execute(cfg: DictConfig, run_dir: Path) -> dict:
    """Validate, load, decode (resuming), summarise. ``checks.UserError`` for anything the user can fix."""
    import torch

    from specpolicy.runs import RecordStore, RunDirError, environment_info

    arms = checks.validate(cfg)
    run_key = _run_key(cfg)
    try:
        store = RecordStore(run_dir)
    except RunDirError as err:
        raise checks.UserError(str(err)) from None
    checks.check_resume(store, arms, run_key, run_dir)  # before the (slow) model load
    torch.set_num_threads(cfg.threads)
    model = _model(cfg.model.path, cfg.model.device, cfg.model.dtype)
    prompts, data_info = checks.prompts_for(cfg.data, model.tokenizer)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    env = environment_info(model, cfg.threads, data_info)
    (run_dir / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    decode_all(cfg, arms, model, prompts, store, run_key)
    return finish(cfg, arms, store, run_dir)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="run")
def app(cfg: DictConfig) -> dict:
    """The Hydra task: one run directory. Bad input -> one stderr line, exit 2, no empty results directory left."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        return execute(cfg, run_dir)
    except checks.UserError as err:
        checks.remove_if_empty(run_dir, log_name=f"{hc.job.name}.log")
        fail(err)

GROUPS = ("policy", "model", "data", "decode", "experiment")
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p"}  # flags whose value is the next argument
_SKIP_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--version", "--shell-completion", "-sc",
               "--experimental-rerun", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}
MAX_PREFLIGHT = 64  # sweep combinations composed before launching (the rest are checked inside their jobs)


def fail(err: Exception) -> None:
    """The one stderr line and exit code 2 for input a user can fix."""
    print("error: " + " ".join(str(err).split()), file=sys.stderr)
    sys.exit(2)


def _one_line(err: Exception) -> str:
    """Hydra/OmegaConf error text (and its cause's first line) folded into one line, without the key dumps."""
    def lines(e: BaseException) -> list[str]:
        out = [ln.strip() for ln in str(e).split("Config search path:")[0].splitlines() if ln.strip()]
        return [ln for ln in out if not ln.startswith(("full_key:", "object_type=", "reference_type="))]

    text = "; ".join(lines(err)) or type(err).__name__
    cause = lines(err.__cause__)[:1] if err.__cause__ is not None else []
    return f"{text} ({cause[0]})" if cause else text


def _check_key(cfg: DictConfig, key: str) -> None:
    """A dotted override key must exist in the composed config; else a did-you-mean line with the allowed keys."""
    import difflib

    node, path = cfg, []
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            allowed = [".".join(path + [k]) for k in node] if isinstance(node, DictConfig) else []
            close = difflib.get_close_matches(".".join(path + [part]), allowed, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ";"
            raise checks.UserError(f"unknown key {key!r}{hint} allowed: {', '.join(allowed)}")
        node, path = node[part], path + [part]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _check_choice(group: str, value: str) -> None:
    import difflib

    allowed = _options(group)
    if value in allowed or (group == "experiment" and value == "null"):
        return
    close = difflib.get_close_matches(value, allowed, n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ";"
    raise checks.UserError(f"unknown {group} {value!r}{hint} allowed: {', '.join(allowed)}")


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


def preflight(argv: list[str]) -> None:
    """Compose and validate what Hydra is about to run (every sweep combination, up to ``MAX_PREFLIGHT``).

    Unknown group options get a did-you-mean line; unknown policy parameters the registry's line; Hydra's own
    composition errors are folded into one line. Raises ``checks.UserError``.
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
        raise checks.UserError(_one_line(err)) from None
    for o in parsed:
        if o.key_or_group in GROUPS and not o.is_delete():
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            for v in values:
                _check_choice(o.key_or_group, v)
    sweep = multirun and any(o.is_sweep_override() for o in parsed)
    combos = BasicSweeper.split_arguments(parsed, None)[0] if sweep else [overrides]
    for combo in combos[:MAX_PREFLIGHT]:
        checks.validate(_compose(combo))


def _compose(overrides: list[str]) -> DictConfig:
    """The job config for ``overrides`` (Hydra's own included, e.g. ``hydra/launcher=joblib``), or a ``UserError``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from specpolicy.policies import PolicyParamError, get_policy

    parser = OverridesParser.create()
    keys = [parser.parse_override(o).key_or_group for o in overrides]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="run"):
        try:
            base = compose("run", overrides=[o for k, o in zip(keys, overrides) if k in GROUPS])  # chosen options
            for k in keys:
                if k in GROUPS or k == "hydra" or k.startswith(("hydra.", "hydra/")):
                    continue
                if k.startswith("policy.") and k.split(".")[1] not in base.policy:
                    get_policy(base.policy.name, **{k.split(".")[1]: None})  # raises the registry's did-you-mean
                _check_key(base, k)
            return compose("run", overrides=overrides)
        except PolicyParamError as err:
            raise checks.UserError(str(err)) from None
        except checks.UserError:
            raise
        except Exception as err:  # hydra / omegaconf composition errors
            raise checks.UserError(_one_line(err)) from None


def main() -> None:
    """Check the command line (groups, parameters, files) before Hydra creates anything, then run the app."""
    try:
        preflight(sys.argv[1:])
    except checks.UserError as err:
        fail(err)
    app()


if __name__ == "__main__":
    main()
