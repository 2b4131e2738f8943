"""The stdlib corpus: deterministic, disjoint splits by top-level module; test code never evaluated on."""

import sysconfig

import pytest

from specpolicy.data import SPLITS, load_corpus, split_of
from specpolicy.data.corpus import Corpus, module_bucket


def test_split_is_deterministic_and_stable():
    # the split is a pure function of the module name (SHA-256), so it is the same in every process
    assert [split_of(m) for m in ("json", "asyncio", "os", "email")] == [split_of(m) for m in ("json", "asyncio", "os", "email")]
    assert module_bucket("json") == module_bucket("json") and 0 <= module_bucket("json") < 100
    a, b = Corpus(), Corpus()
    assert [d.path for d in a.documents("test")] == [d.path for d in b.documents("test")]
    assert a.fingerprint() == b.fingerprint()


def test_splits_are_disjoint_by_module_and_cover_everything():
    c = load_corpus()
    docs = c.all_documents
    assert sum(len(c.documents(s)) for s in SPLITS) == len(docs)
    mods = {s: {d.module for d in c.documents(s)} for s in ("train", "valid", "test")}
    assert not (mods["train"] & mods["valid"]) and not (mods["train"] & mods["test"]) and not (mods["valid"] & mods["test"])
    assert all(len(c.documents(s)) > 0 for s in ("train", "valid", "test"))


def test_test_code_and_site_packages_never_evaluated():
    c = load_corpus()
    for split in ("valid", "test"):
        for d in c.documents(split):
            parts = d.path.split("/")
            assert "test" not in parts[:-1] and "tests" not in parts[:-1] and parts[0] != "test"
    assert all("site-packages" not in d.path for d in c.all_documents)
    assert str(c.root) == str(sysconfig.get_paths()["stdlib"]) or c.root.exists()


def test_fingerprint_changes_with_the_file_list(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    f1 = Corpus(tmp_path).fingerprint()
    (tmp_path / "c.py").write_text("z = 3\n")
    assert Corpus(tmp_path).fingerprint() != f1


def test_a_package_corpus_is_all_held_out_and_refuses_what_is_not_a_package():
    from specpolicy.data import package_corpus

    corpus = package_corpus("optuna")
    summary = corpus.summary()["splits"]
    assert summary["test"]["files"] > 50 and summary["train"]["files"] == summary["valid"]["files"] == 0
    assert "optuna" in str(corpus.root)
    for bad in ("no_such_package_xyz", "os.path", ""):
        with pytest.raises(ValueError, match="not an installed package directory"):
            package_corpus(bad)
