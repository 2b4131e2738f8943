"""Record a replay trace: greedy decodes of held-out prompts with the drafter's chain probed at every position.

    python -m experiments.record                                    # 100 stdlib prompts x 128 new tokens, K = 8
    python -m experiments.record data.n_prompts=20 probe_depth=6 hydra.run.dir=runs/record/small
    python -m experiments.record model=hf model.path=DIR data=file data.path=prompts.jsonl
    python -m experiments.record drafter=medusa                     # a trace of another drafter

What a trace holds and how it is recorded: ``specpolicy.replay.record`` (``record_trace``) and
``specpolicy.replay.trace``. Writes ``trace.safetensors`` to the run directory, or to ``out=PATH``.
Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from experiments.common import (
    CONF_DIR,
    DataConf,
    DrafterConf,
    ModelConf,
    TraceConf,
    check_recording,
    preflight,
    record_into,
    run_task,
)

GROUPS = ("model", "drafter", "data")


@dataclass
class RecordConfig(TraceConf):
    model: ModelConf = field(default_factory=ModelConf)
    drafter: DrafterConf = field(default_factory=DrafterConf)  # the trace records which drafter made it
    data: DataConf = field(default_factory=DataConf)
    threads: int = 1  # torch.set_num_threads; one or two is faster by machine and load (README "Speed")
    out: str = ""  # "" -> <run dir>/trace.safetensors


ConfigStore.instance().store(name="record_schema", node=RecordConfig)


def execute(cfg: DictConfig, run_dir: Path):
    from specpolicy.replay.record import describe

    check_recording(cfg)
    out = Path(cfg.out) if cfg.out else run_dir / "trace.safetensors"
    trace = record_into(cfg, out)
    print(describe(trace, out))
    return trace


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="record")
def app(cfg: DictConfig):
    return run_task(cfg, execute)


def main() -> None:
    preflight("record", check_recording, GROUPS)
    app()


if __name__ == "__main__":
    main()
