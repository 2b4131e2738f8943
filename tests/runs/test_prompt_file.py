"""specpolicy.runs.prompt_file: JSONL and plain-text prompt files, one-line errors for every bad file."""

from __future__ import annotations

import pytest

from specpolicy.runs import PromptFileError, read_prompt_file


def test_jsonl_prompt_and_text_keys_and_ids(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "def f(x):\\n    return"}\n\n{"text": "import os", "id": "imp"}\n')
    assert read_prompt_file(p) == [("p.jsonl:1", "def f(x):\n    return"), ("imp", "import os")]
    assert read_prompt_file(p, n=1) == [("p.jsonl:1", "def f(x):\n    return")]


def test_plain_text_one_prompt_per_line(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("import os\nclass A:\n")
    assert read_prompt_file(p) == [("p.txt:1", "import os"), ("p.txt:2", "class A:")]


def test_jsonl_detected_by_content(tmp_path):
    p = tmp_path / "prompts"
    p.write_text('{"prompt": "x = 1"}\n')
    assert read_prompt_file(p) == [("prompts:1", "x = 1")]


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("e.jsonl", '{"prompt": "a"}\n{"prompt": ""}\n', "line 2: empty prompt"),
        ("e.txt", "a\n\nb\n", "line 2: empty prompt"),
        ("e.txt", "a\n   \n", "line 2: empty prompt"),
        ("e.jsonl", '{"prompt": "a"}\n{"prompt": \n', "line 2: not valid JSON"),
        ("e.jsonl", '{"question": "a"}\n', "no \"prompt\" or \"text\""),
        ("e.jsonl", '{"prompt": 3}\n', "no \"prompt\" or \"text\""),
        ("e.txt", "", "holds no prompts"),
        ("e.jsonl", '{"prompt": "a", "id": 1}\n{"prompt": "b", "id": 1}\n', "ids repeat"),
    ],
)
def test_bad_files_are_one_line(tmp_path, name, content, match):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(PromptFileError, match=match) as err:
        read_prompt_file(p)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(PromptFileError, match="does not exist"):
        read_prompt_file(tmp_path / "nope.jsonl")
