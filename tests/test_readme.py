"""The README's examples run as written: the "Your own policy / your own drafter" code blocks (each after a
``<!-- readme-example: ... -->`` marker), including ``check_policy`` / ``check_lossless`` on the example policy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLES = dict(re.findall(r"<!-- readme-example: (\w+) -->\n```python\n(.*?)```", README.read_text(), re.S))


def test_the_examples_are_there_and_short():
    assert set(EXAMPLES) == {"policy", "drafter"}
    for name, code in EXAMPLES.items():
        body = [ln for ln in code.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "import", "from"))]
        assert len(body) <= 30, f"the {name} example grew to {len(body)} lines"


@pytest.mark.parametrize("name", ["policy", "drafter"])
def test_readme_example_runs(name, capsys):
    namespace = {"__name__": f"readme_{name}"}
    exec(compile(EXAMPLES[name], f"README.md:{name}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert printed.strip(), "the example prints its result"
    if name == "policy":
        assert float(printed.split()[-1]) > 1.0  # TPF of the example policy on the shipped model
    else:
        res = namespace["res"]
        assert res.stats.accepted > 0 and res.stats.lossy_tokens == 0  # the drafter's drafts were accepted
