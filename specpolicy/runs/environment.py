"""``environment.json``: what a run's numbers depend on besides its config (versions, device, threads, data, weights).

Example:
    >>> info = environment_info(model, threads=2, data={"corpus_fingerprint": corpus.fingerprint()})
    >>> info["git_revision"], info["torch"], info["model_fingerprint"]
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

__all__ = ["cpu_name", "environment_info", "git_revision"]


def git_revision(cwd: str | Path | None = None) -> dict:
    """{"commit": HEAD or None, "dirty": bool or None} of the repository containing ``cwd`` (None outside git).

    Example:
        >>> git_revision()["commit"][:7]
        '79e4cfd'
    """
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if head else None
    return {"commit": head.strip() if head else None, "dirty": bool(status.strip()) if status is not None else None}


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none).

    Example:
        >>> cpu_name()
        'AMD EPYC'
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def environment_info(model, threads: int, data: dict | None = None) -> dict:
    """Versions, platform, device, threads, git revision, model fingerprint and card sha, and ``data`` (fingerprints).

    Example:
        >>> environment_info(model, threads=2)["threads"]
        {'requested': 2, 'torch': 2, 'OMP_WAIT_POLICY': 'PASSIVE'}
    """
    import transformers

    device = model.device
    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": str(model.dtype).removeprefix("torch."),
        "threads": {"requested": threads, "torch": torch.get_num_threads(),
                    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")},
        "git": git_revision(Path(__file__).resolve().parent),
        "model_name": model.name,
        "drafter": getattr(model, "drafter_label", "mtp"),
        "drafter_arg": getattr(model, "drafter_arg", ""),
        "model_fingerprint": model.fingerprint(),
        "model_card_sha256": model.card.get("weights_sha256"),
    }
    try:
        import hydra

        info["hydra"] = hydra.__version__
    except ImportError:  # pragma: no cover - hydra is a dependency
        pass
    info.update(data or {})
    return info
