"""Every config in experiments/conf composes for the run app; policy files and the registry match one to one."""

from __future__ import annotations

import importlib.util
import inspect

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import experiments.run as run_app
from specpolicy.policies import PolicyParamError, list_policies, policy_class
from specpolicy.runs.checks import UserError, validate

CONF = run_app.CONF_DIR
GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in run_app.GROUPS}


def _compose(overrides: list[str], hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="run"):
        return compose("run", overrides=overrides, return_hydra_config=hydra)


def test_every_registered_policy_has_a_file_and_back():
    assert GROUPS["policy"] == sorted(list_policies())


@pytest.mark.parametrize("name", GROUPS["policy"])
def test_policy_file_composes_to_its_class_defaults(name):
    cfg = _compose([f"policy={name}"])
    assert cfg.policy.name == name
    params = {k: v for k, v in OmegaConf.to_container(cfg.policy).items() if k != "name"}
    signature = inspect.signature(policy_class(name)).parameters.values()
    assert params == {p.name: p.default for p in signature}  # the YAML holds no copy: the schema is the signature
    try:
        policy_class(name)()
    except PolicyParamError:  # defaults that need an artefact (e.g. a shipped calibrator) not present here
        with pytest.raises(UserError):
            validate(cfg)
    else:
        assert validate(cfg).arms[-1].name == name


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in GROUPS.items() for o in opts if g != "policy"])
def test_every_option_composes(group, option):
    cfg = _compose([f"{group}={option}"])
    assert cfg.policy.name in list_policies()
    if (group, option) == ("model", "hf"):
        assert cfg.model.path == ""  # required: the run refuses it until model.path is given
    elif (group, option) == ("data", "file"):
        assert cfg.data.name == "file" and cfg.data.path == ""
    else:
        validate(cfg)  # a complete, valid run config


def test_defaults_are_the_first_command():
    cfg = _compose([])
    assert (cfg.policy.name, cfg.model.path, cfg.data.name, cfg.decode.temperature) == ("threshold", "tiny",
                                                                                        "stdlib_test", 0.0)
    assert cfg.threads == 1 and cfg.baselines is True
    assert _compose(["decode=sampling"]).decode.temperature == 0.8


def test_experiment_pins_its_values():
    cfg = _compose(["experiment=paper_threshold"])
    assert cfg.policy.name == "threshold" and cfg.policy.tau_trust == 0.95
    assert cfg.data.n_prompts == 100


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_slurm"])
def test_launchers_compose(launcher):
    plugin = {"joblib": "hydra_plugins.hydra_joblib_launcher", "submitit_slurm": "hydra_plugins.hydra_submitit_launcher"}
    if launcher in plugin and importlib.util.find_spec(plugin[launcher]) is None:
        pytest.skip(f"{plugin[launcher]} is not installed (optional extra)")
    cfg = _compose([f"hydra/launcher={launcher}", "policy=fixed"], hydra=True)
    assert cfg.hydra.runtime.choices["hydra/launcher"] == launcher
    if launcher == "submitit_slurm":
        assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
