"""specpolicy.runs.checks and arms: validation errors are one line; only empty results directories are removed."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from specpolicy.decoding.harness import rotation
from specpolicy.runs.arms import plan_arms
from specpolicy.runs.checks import UserError, check_data, check_model, remove_if_empty, validate


@dataclass
class Decode:
    temperature: float = 0.0
    max_new_tokens: int = 8
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    max_draft: int = 16


@dataclass
class Model:
    path: str = "tiny"
    device: str = "cpu"
    dtype: str | None = None


@dataclass
class Data:
    name: str = "stdlib_test"
    n_prompts: int = 2
    prompt_tokens: int = 16
    seed: int = 0
    split: str = "test"
    path: str = ""


class Policy(dict):
    __getattr__ = dict.__getitem__


@dataclass
class Cfg:
    policy: Policy = field(default_factory=lambda: Policy(name="threshold"))
    model: Model = field(default_factory=Model)
    data: Data = field(default_factory=Data)
    decode: Decode = field(default_factory=Decode)
    baselines: bool = True
    threads: int = 2
    bootstrap: int = 100


def test_validate_returns_the_plan_with_full_params():
    plan = validate(Cfg(policy=Policy(name="threshold", tau_trust=0.9)))
    arms = plan.arms
    assert [a.label for a in arms] == ["ar", "fixed", "threshold"]
    assert arms[-1].params == {"tau_extend": 0.5, "tau_trust": 0.9, "k_max": 6}
    assert arms[1].params == {"k": 6}  # fixed at the policy's k_max
    assert [a.label for a in validate(Cfg(baselines=False)).arms] == ["threshold"]
    assert plan.generate_kw == {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "max_draft": 16, "engine": "auto"}
    assert not plan.sampling
    assert plan.model.path == "tiny" and plan.data.n_prompts == 2 and plan.decode.max_new_tokens == 8
    other = validate(Cfg(decode=Decode(max_new_tokens=9)))
    assert len(plan.run_key) == 16 and other.run_key != plan.run_key  # records of other settings do not mix
    assert validate(Cfg(threads=1)).run_key == plan.run_key  # threads do not change what is decoded

    @dataclass
    class WithEngine(Decode):
        engine: str = "auto"

    assert validate(Cfg(decode=WithEngine())).run_key == plan.run_key  # auto: the key of runs before the option
    packed = validate(Cfg(decode=WithEngine(engine="packed")))
    assert packed.run_key != plan.run_key and packed.generate_kw["engine"] == "packed"


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (Cfg(decode=Decode(max_new_tokens=0)), "max_new_tokens=0 is invalid; allowed: an integer >= 1"),
        (Cfg(decode=Decode(temperature=-1)), "temperature"),
        (Cfg(decode=Decode(top_p=0)), "top_p"),
        (Cfg(threads=0), "threads=0"),
        (Cfg(policy=Policy(name="threshold", tau_trust=1.5)), "tau_trust=1.5 is out of range"),
        (Cfg(policy=Policy(name="fixed", tau=1)), "unknown parameter tau"),
        (Cfg(policy=Policy(name="treshold")), "did you mean 'threshold'"),
        (Cfg(model=Model(path="/no/such/dir")), "not found"),
        (Cfg(model=Model(path="")), "model.path is missing"),
        (Cfg(model=Model(dtype="int3")), "model.dtype=int3"),
        (Cfg(model=Model(device="tpu")), "model.device=tpu"),
        (Cfg(data=Data(name="wiki")), "data.name=wiki is unknown"),
        (Cfg(data=Data(n_prompts=0)), "n_prompts=0"),
        (Cfg(data=Data(split="train")), "data.split=train"),
        (Cfg(data=Data(name="file")), "needs data.path"),
        (Cfg(data=Data(name="file", path="/no/such.jsonl")), "does not exist"),
    ],
)
def test_bad_settings_are_one_line(cfg, match):
    with pytest.raises(UserError, match=match) as err:
        validate(cfg)
    assert "\n" not in str(err.value)


def test_model_and_data_checks_accept_good_input(tmp_path):
    check_model(Model())
    (tmp_path / "p.txt").write_text("a\nb\n")
    assert check_data(Data(name="file", path=str(tmp_path / "p.txt"), n_prompts=0)) == [("p.txt:1", "a"), ("p.txt:2", "b")]


def test_arms_dedupe_and_rotate():
    assert [a.label for a in plan_arms("fixed", {"k": 3})] == ["ar", "fixed"]
    assert [a.label for a in plan_arms("ar", {})] == ["fixed", "ar"]
    assert plan_arms("heuristic", {})[1].params == {"k": 4}  # k_init before k_max
    arms = plan_arms("threshold", {})
    orders = [rotation([a.label for a in arms], i) for i in range(3)]
    assert [o[0] for o in orders] == ["ar", "fixed", "threshold"]  # each policy goes first in turn


def test_remove_if_empty_only_removes_what_hydra_wrote(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "run" / "x"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("a: 1\n")
    (run / "run.log").write_text("")
    assert remove_if_empty(run)
    assert not (tmp_path / "runs").exists()  # empty parents below the working directory go too
    keep = tmp_path / "keep"
    (keep / ".hydra").mkdir(parents=True)
    (keep / "records.jsonl").write_text("{}\n")
    assert not remove_if_empty(keep)
    assert (keep / "records.jsonl").exists() and (keep / ".hydra").exists()
    assert not remove_if_empty(tmp_path / "absent")


def test_a_resumed_run_refuses_records_of_another_version_or_configuration(tmp_path):
    from specpolicy import __version__
    from specpolicy.runs import RecordStore, runner

    plan = validate(Cfg())
    record = {"prompt_id": "a.py:1", "policy": "ar", "params": plan.arms[0].params, "run_key": plan.run_key,
              "specpolicy_version": __version__}
    (tmp_path / "ok").mkdir()
    RecordStore(tmp_path / "ok").add(record, steps=[])
    assert runner.open_store(tmp_path / "ok", plan).done == {("a.py:1", "ar")}  # same version and settings: resume
    for name, changes, match in (("old", {"specpolicy_version": "0.1.0"}, "records of specpolicy 0.1.0"),
                                 ("unversioned", {"specpolicy_version": None}, "records of specpolicy before 0.2"),
                                 ("other", {"run_key": "0" * 16}, "records of another configuration")):
        rec = {k: v for k, v in {**record, **changes}.items() if v is not None}
        (tmp_path / name).mkdir()
        RecordStore(tmp_path / name).add(rec, steps=[])
        with pytest.raises(UserError, match=match):
            runner.open_store(tmp_path / name, plan)
