"""Everything a run checks before decoding: policy parameters, decode settings, model, prompts, resumability.

Each check raises ``UserError`` with one line: what is wrong and what is allowed. ``experiments.run`` calls these on
the composed config before Hydra creates a results directory (and again inside the job, for sweeps), prints the
line to stderr and exits with code 2. The functions take any attribute-style config (an OmegaConf node or a
dataclass), so they are unit-testable without Hydra.

``validate(cfg)`` is the one validation step of a run: it returns a ``RunPlan`` (the arms with complete parameters,
the settings as plain values and the key that makes records comparable), which ``specpolicy.runs.runner`` executes.

Example:
    >>> plan = validate(cfg)            # RunPlan(arms=(Arm(ar), Arm(fixed), Arm(threshold)), ...) or UserError
    >>> model = load(plan.model); prompts, info = prompts_for(plan.data, model.tokenizer)
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from specpolicy.decoding.engine import unknown_engine
from specpolicy.errors import UserError
from specpolicy.policies import PolicyParamError, UnknownPolicyError, get_policy

from .arms import Arm, needs_step_cost, plan_arms, with_step_costs
from .prompt_file import PromptFileError, read_prompt_file
from .records import RecordStore

__all__ = ["RunPlan", "UserError", "check_data", "check_model", "check_resume", "drafter_spec", "fill_step_cost", "load",
           "prompts_for", "remove_if_empty", "validate"]

DATA_SOURCES = ("stdlib_test", "package", "file")
SPLITS = ("test", "valid")  # held-out splits only: prompts from train would flatter the drafter


def _missing(node, key: str) -> bool:
    try:
        value = getattr(node, key)
    except Exception:  # omegaconf.MissingMandatoryValue
        return True
    return value is None or value == "???"


def _plain(node) -> dict:
    """Plain Python values of a config node (nested OmegaConf containers become dicts/lists: JSON-safe params)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node) if isinstance(node, Mapping) else dict(vars(node))


@dataclass(frozen=True)
class RunPlan:
    """A run, resolved and checked: what to decode, with which settings, and the key of comparable records."""

    arms: tuple[Arm, ...]  # baselines first, the requested policy last; parameters complete
    model: SimpleNamespace  # path, device, dtype
    data: SimpleNamespace  # the data group's fields
    decode: SimpleNamespace  # temperature, max_new_tokens, top_p, top_k, seed, max_draft
    threads: int
    nll: bool  # score every output with one teacher-forced target forward
    bootstrap: int  # resamples for the summary's intervals
    run_key: str  # hash of the model, drafter, data and decode settings: records with another key do not mix
    drafter: str = "mtp"  # the load_model(drafter=...) spec

    @property
    def generate_kw(self) -> dict:
        """The ``generate`` keyword arguments of every decode of the run besides ``max_new_tokens`` (the harness
        passes it) and the seed (``decode.seed`` + prompt index)."""
        d = self.decode
        return {"temperature": d.temperature, "top_p": d.top_p, "top_k": d.top_k, "max_draft": d.max_draft,
                "engine": getattr(d, "engine", "auto")}

    @property
    def sampling(self) -> bool:
        return self.decode.temperature > 0


def validate(cfg) -> RunPlan:
    """Check policy parameters (via the registry), decode and run settings, model and data; return the plan.

    Example:
        >>> validate(cfg).arms[-1].params
        {'tau_extend': 0.5, 'tau_trust': 0.95, 'k_max': 6}
    """
    d = cfg.decode
    checks = [
        (isinstance(d.max_new_tokens, int) and d.max_new_tokens >= 1,
         f"decode.max_new_tokens={d.max_new_tokens} is invalid; allowed: an integer >= 1"),
        (d.temperature >= 0, f"decode.temperature={d.temperature} is invalid; allowed: 0 (greedy) or > 0 (sampling)"),
        (0 < d.top_p <= 1, f"decode.top_p={d.top_p} is invalid; allowed: 0 < top_p <= 1"),
        (d.top_k >= 0, f"decode.top_k={d.top_k} is invalid; allowed: 0 (off) or >= 1"),
        (d.max_draft >= 0, f"decode.max_draft={d.max_draft} is invalid; allowed: >= 0"),
        (unknown_engine(getattr(d, "engine", "auto")) is None,
         unknown_engine(getattr(d, "engine", "auto"), "decode.engine")),
        (cfg.threads >= 1, f"threads={cfg.threads} is invalid; allowed: an integer >= 1"),
        (cfg.bootstrap >= 0, f"bootstrap={cfg.bootstrap} is invalid; allowed: >= 0 resamples"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    params = {k: v for k, v in _plain(cfg.policy).items() if k != "name"}
    try:
        arms = plan_arms(cfg.policy.name, params, cfg.baselines)
    except (UnknownPolicyError, PolicyParamError) as err:
        raise UserError(str(err)) from None
    check_model(cfg.model)
    check_data(cfg.data)
    drafter = drafter_spec(getattr(cfg, "drafter", None))
    settings = {k: _plain(getattr(cfg, k)) for k in ("model", "data", "decode")}
    keyed = {**settings, "decode": dict(settings["decode"]), "drafter": drafter}
    if keyed["decode"].get("engine") == "auto":  # runs made before the option existed keep their key
        del keyed["decode"]["engine"]
    run_key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
    return RunPlan(tuple(arms), *(SimpleNamespace(**settings[k]) for k in ("model", "data", "decode")),
                   threads=cfg.threads, nll=bool(getattr(cfg, "nll", True)), bootstrap=cfg.bootstrap,
                   run_key=run_key, drafter=drafter)


def drafter_spec(d) -> str:
    """The ``load_model(drafter=...)`` string of a drafter group node (``name``, ``path``), a string, or None
    (the default, ``mtp``); one-line ``UserError`` for an unknown kind.

    Example:
        >>> drafter_spec({"name": "medusa", "path": "runs/heads"})
        'medusa:runs/heads'
    """
    from specpolicy.models.loading import parse_drafter_spec

    if d is None:
        return "mtp"
    if isinstance(d, str):
        spec = d
    else:
        node = _plain(d)
        spec = f"{node['name']}:{node['path']}" if node.get("path") else str(node.get("name", "mtp"))
    parse_drafter_spec(spec)  # DrafterSpecError (a UserError) for an unknown kind
    return spec


def drafter_label_of(d) -> str:
    """The name the drafter of a group node / spec (as ``drafter_spec`` reads it) carries in traces and calibrators
    (``models.mtp.drafter_label``).

    Example:
        >>> drafter_label_of({"name": "mtp", "path": "int8"}), drafter_label_of("medusa:runs/heads")
        ('mtp-int8', 'medusa')
    """
    from specpolicy.models.loading import parse_drafter_spec
    from specpolicy.models.mtp import drafter_label

    return drafter_label(*parse_drafter_spec(drafter_spec(d)))


def check_model(m) -> None:
    """Model path resolvable (embedded, existing checkpoint directory, or hub id), dtype and device allowed."""
    import torch

    from specpolicy.models.loading import DTYPES, ModelNotFoundError, resolve_model_path

    if _missing(m, "path") or not str(m.path):
        raise UserError("model.path is missing; allowed: model=tiny, or model=hf model.path=<checkpoint dir or hub id>")
    try:
        resolve_model_path(str(m.path))
    except ModelNotFoundError as err:
        raise UserError(str(err)) from None
    if m.dtype is not None and m.dtype not in DTYPES:
        raise UserError(f"model.dtype={m.dtype} is unknown; allowed: {', '.join(DTYPES)} or null")
    dev = str(m.device)
    if not (dev in ("cpu", "auto") or dev == "cuda" or dev.startswith("cuda:")):
        raise UserError(f"model.device={dev} is unknown; allowed: cpu, cuda, cuda:N, auto")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"model.device={dev} but CUDA is not available here; allowed: cpu or auto")


def check_data(data) -> list[tuple[str, str]] | None:
    """Data source known; sizes positive; a prompt file readable with no empty prompt (returns its prompts)."""
    if data.name not in DATA_SOURCES:
        raise UserError(f"data.name={data.name} is unknown; allowed: {', '.join(DATA_SOURCES)}")
    if data.name == "file":
        if _missing(data, "path") or not str(data.path):
            raise UserError("data=file needs data.path=<prompts .jsonl or .txt>; allowed: an existing file")
        if data.n_prompts < 0:
            raise UserError(f"data.n_prompts={data.n_prompts} is invalid; allowed: 0 (all) or >= 1")
        try:
            return read_prompt_file(data.path, data.n_prompts)
        except PromptFileError as err:
            raise UserError(str(err)) from None
    if data.n_prompts < 1:
        raise UserError(f"data.n_prompts={data.n_prompts} is invalid; allowed: an integer >= 1")
    if data.prompt_tokens < 1:
        raise UserError(f"data.prompt_tokens={data.prompt_tokens} is invalid; allowed: an integer >= 1")
    if data.name == "package":
        return None  # the package itself is checked when its corpus loads (prompts_for)
    if data.split not in SPLITS:
        raise UserError(f"data.split={data.split} is invalid; allowed: {', '.join(SPLITS)}")
    return None


def load(m, drafter=None):
    """The model named by ``m`` (path, device, dtype) with the drafter of ``drafter`` (a group node, a spec string
    or None: MTP); loading failures become one-line ``UserError``s."""
    import torch

    from specpolicy.models.loading import load_model

    device = ("cuda" if torch.cuda.is_available() else "cpu") if m.device == "auto" else m.device
    try:
        return load_model(str(m.path), device=device, dtype=m.dtype, drafter=drafter_spec(drafter),
                          trust_remote_code=bool(getattr(m, "trust_remote_code", False)))
    except UserError:  # ModelNotFoundError, CheckpointError, DrafterSpecError: already one line
        raise
    except (OSError, ValueError, RuntimeError) as err:  # transformers / safetensors / a hub download
        first = " ".join(str(err).strip().splitlines()[0].split()) if str(err).strip() else type(err).__name__
        raise UserError(f"model {m.path!r} could not be loaded ({type(err).__name__}: {first[:300]}); allowed: a "
                        "checkpoint directory or hub id with config.json and complete *.safetensors weights") from None


def prompts_for(data, tokenizer) -> tuple[list, dict]:
    """(prompts, data fingerprint for environment.json): seeded stdlib prompts or a prompt file, tokenized."""
    from specpolicy.data import Prompt, load_corpus, package_corpus, sample_prompts

    if data.name == "file":
        items = check_data(data)
        out = []
        for pid, text in items:
            ids = tuple(tokenizer.encode(text, add_special_tokens=False))
            if not ids:
                raise UserError(f"prompt {pid} encodes to no tokens; allowed: non-empty text")
            out.append(Prompt(pid, text, ids, str(data.path)))
        sha = hashlib.sha256(Path(data.path).expanduser().read_bytes()).hexdigest()
        return out, {"data": "file", "prompt_file": str(data.path), "prompt_file_sha256": sha}
    try:
        corpus = package_corpus(data.package) if data.name == "package" else load_corpus()
        split = "test" if data.name == "package" else data.split
        prompts = sample_prompts(corpus, tokenizer, data.n_prompts, data.prompt_tokens, data.seed, split)
    except ValueError as err:
        raise UserError(str(err)) from None
    info = {"data": data.name, "corpus_fingerprint": corpus.fingerprint(), "corpus_root": str(corpus.root)}
    if data.name == "package":
        from importlib.metadata import PackageNotFoundError, version

        try:
            info["package_version"] = version(data.package)
        except PackageNotFoundError:
            info["package_version"] = None
    return prompts, info


def check_resume(store: RecordStore, plan: RunPlan, run_dir: Path, version: str) -> None:
    """Records already in ``run_dir`` must come from this package version, the same model/data/decode settings and
    the same policy parameters (compared as JSON; a ``step_cost`` the plan leaves None matches the recorded one,
    which ``fill_step_cost`` then reuses); else one line (resume with the same settings, or a new directory)."""
    params = {a.label: a.params for a in plan.arms}
    for r in store.records:
        if r.get("specpolicy_version") != version:
            raise UserError(f"{run_dir} holds records of specpolicy {r.get('specpolicy_version', 'before 0.2')}, not "
                            f"{version}; allowed: a new hydra.run.dir (results of two versions are not mixed)")
        if r.get("run_key") != plan.run_key or (r["policy"] in params
                                                 and not _same_params(r["params"], params[r["policy"]])):
            raise UserError(
                f"{run_dir} holds records of another configuration ({r['policy']} on {r['prompt_id']}); "
                "allowed: the same settings to resume, or a new hydra.run.dir"
            )


def _with_recorded_cost(planned: Mapping, recorded: Mapping) -> dict:
    """``planned`` with each ``step_cost`` it leaves None (also inside ``base_params``) taken from ``recorded``."""
    out = dict(planned)
    if "step_cost" in out and out["step_cost"] is None and "step_cost" in recorded:
        out["step_cost"] = recorded["step_cost"]
    if isinstance(out.get("base_params"), Mapping) and isinstance(recorded.get("base_params"), Mapping):
        out["base_params"] = _with_recorded_cost(out["base_params"], recorded["base_params"])
    return out


def _same_params(recorded: Mapping, planned: Mapping) -> bool:
    """Equal as JSON (tuples are lists there), where a ``step_cost`` the plan leaves None matches any recorded one."""
    as_json = json.loads(json.dumps(_with_recorded_cost(planned, recorded)))
    return as_json == json.loads(json.dumps(dict(recorded)))


def fill_step_cost(plan: RunPlan, cost, store: RecordStore | None = None) -> RunPlan:
    """The plan with every arm's ``step_cost`` left None filled: from the arm's records in ``store`` when the run
    resumes (the same numbers as before), else from ``cost`` -- a ``decoding.cost.CostModel`` (anything with
    ``step_s(m)``) or a zero-argument callable returning one, called only if some arm needs it (measuring costs).

    Example:
        >>> plan = fill_step_cost(validate(cfg), lambda: measure_cost(model, prompts[0].ids, k=8, reps=10), store)
        >>> plan.arms[-1].params["step_cost"][:2]                                      # doctest: +SKIP
        (1.0, 1.31)
    """
    from dataclasses import replace

    if not needs_step_cost(plan.arms):
        return plan
    recorded = {r["policy"]: r["params"] for r in (store.records if store is not None else ())}
    arms, measured = [], None
    for a in plan.arms:
        if not needs_step_cost([a]):
            arms.append(a)
        elif a.label in recorded:
            params = _with_recorded_cost(a.params, recorded[a.label])
            arms.append(replace(a, params=get_policy(a.name, **params).params()))
        else:
            measured = measured if measured is not None else (cost() if callable(cost) else cost)
            arms.extend(with_step_costs([a], measured))
    return replace(plan, arms=tuple(arms))


def remove_if_empty(run_dir: Path, log_name: str = "run.log") -> bool:
    """Remove a results directory that holds only what Hydra wrote at start (no records); then empty parents.

    Nothing else is ever deleted: a directory holding anything besides ``.hydra/``, the job log and ``config.yaml``
    is kept as it is. Returns True if ``run_dir`` was removed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    allowed = {".hydra", log_name, "config.yaml"}
    if any(p.name not in allowed for p in run_dir.iterdir()):
        return False
    for p in run_dir.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    run_dir.rmdir()
    stop = Path.cwd().resolve()
    parent = run_dir.resolve().parent
    while parent != stop and stop in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    return True
