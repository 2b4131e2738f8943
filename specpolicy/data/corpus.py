"""The Python standard library of the running interpreter as a corpus, split by top-level module.

Every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]`` is a document; ``site-packages`` is never read. A file's
split is decided by a stable hash (SHA-256) of its top-level module name, so all of ``asyncio`` lands in one split and
the split never changes between runs or machines with the same interpreter. Test code (the ``test`` package and any
``test``/``tests``/``idle_test`` folder) is *extra training material only*: it never enters ``valid`` or ``test``.

Example:
    >>> from specpolicy.data import load_corpus
    >>> corpus = load_corpus()
    >>> docs = corpus.documents("test")          # list[Document], held-out modules only
    >>> corpus.fingerprint()[:12]                # stable id of file list + sizes
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

SPLITS = ("train", "valid", "test", "train_extra")
TEST_DIRS = {"test", "tests", "idle_test"}


@dataclass(frozen=True)
class SplitConfig:
    """Percentages of top-level modules per split (the rest is ``test``)."""

    train_pct: int = 80
    valid_pct: int = 10


@dataclass(frozen=True)
class Document:
    path: str  # relative to the stdlib root, POSIX style
    module: str  # top-level module name
    split: str
    size: int

    def read(self, root: Path) -> str:
        return (root / self.path).read_text(encoding="utf-8", errors="replace")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def module_bucket(module: str) -> int:
    """Stable bucket in [0, 100) for a top-level module name."""
    return int(hashlib.sha256(module.encode()).hexdigest(), 16) % 100


def split_of(module: str, cfg: SplitConfig = SplitConfig()) -> str:
    b = module_bucket(module)
    if b < cfg.train_pct:
        return "train"
    if b < cfg.train_pct + cfg.valid_pct:
        return "valid"
    return "test"


def _is_test_code(rel: Path) -> bool:
    return any(part in TEST_DIRS for part in rel.parts[:-1]) or rel.parts[0] in TEST_DIRS


class Corpus:
    """The stdlib files, each assigned to ``train``/``valid``/``test`` (or ``train_extra`` for test code)."""

    def __init__(self, root: Path | None = None, split_cfg: SplitConfig = SplitConfig()):
        self.root = Path(root) if root is not None else stdlib_root()
        self.split_cfg = split_cfg

    @cached_property
    def all_documents(self) -> tuple[Document, ...]:
        docs = []
        for f in sorted(self.root.rglob("*.py")):
            rel = f.relative_to(self.root)
            if "site-packages" in rel.parts or "dist-packages" in rel.parts:
                continue
            module = rel.parts[0].removesuffix(".py")
            split = "train_extra" if _is_test_code(rel) else split_of(module, self.split_cfg)
            docs.append(Document(rel.as_posix(), module, split, f.stat().st_size))
        return tuple(docs)

    def documents(self, split: str) -> list[Document]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        return [d for d in self.all_documents if d.split == split]

    def texts(self, split: str) -> list[str]:
        return [d.read(self.root) for d in self.documents(split)]

    def fingerprint(self) -> str:
        """SHA-256 over (path, size, split) of every file: changes iff the corpus or its split changes."""
        h = hashlib.sha256()
        for d in self.all_documents:
            h.update(f"{d.path}\t{d.size}\t{d.split}\n".encode())
        return h.hexdigest()

    def summary(self) -> dict:
        out = {"root_python": sysconfig.get_python_version(), "fingerprint": self.fingerprint(), "splits": {}}
        for s in SPLITS:
            docs = self.documents(s)
            out["splits"][s] = {
                "files": len(docs),
                "bytes": sum(d.size for d in docs),
                "modules": len({d.module for d in docs}),
            }
        return out


def load_corpus(root: str | Path | None = None) -> Corpus:
    """The stdlib corpus of the running interpreter (or of ``root``)."""
    return Corpus(Path(root) if root else None)


def package_corpus(package: str) -> Corpus:
    """The Python source of an installed package (third-party code the embedded model never saw): every module is in
    the ``test`` split (its own test code excepted). ``ValueError`` if the package is not installed or is not a
    directory of Python files.

    Example:
        >>> package_corpus("optuna").summary()["splits"]["test"]["files"] > 100
        True
    """
    import importlib.util

    spec = importlib.util.find_spec(package) if package and "." not in package else None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package {package!r} is not an installed package directory; allowed: the name of an "
                         "installed package with Python sources (e.g. optuna, hydra, tqdm)")
    return Corpus(Path(next(iter(spec.submodule_search_locations))).resolve(), SplitConfig(train_pct=0, valid_pct=0))


if __name__ == "__main__":  # pragma: no cover - convenience
    print(json.dumps(load_corpus().summary(), indent=2))
