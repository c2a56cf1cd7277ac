"""The README's Python examples run as written (each block on its own, in a fresh namespace)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_has_its_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys):
    torch.manual_seed(0)
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.strip()  # every example prints what it produced


def _feature_rows() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Against the libraries you may know"):]
    rows = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row] for row in rows[2:]]  # (the header and its rule left out)


def test_every_feature_marquardt_claims_names_a_test_that_exists():
    rows = _feature_rows()
    assert len(rows) >= 8
    for row in rows:
        feature, ours, test = row[0], row[1], row[-1]
        assert ours == "✔", f"{feature}: the table lists what marquardt does"
        match = re.fullmatch(r"`(tests/[\w/]+\.py)::(test_\w+)`", test)
        assert match, f"{feature}: expected `tests/...py::test_name`, got {test!r}"
        path = README.parent / match.group(1)
        assert path.is_file(), f"{feature}: {match.group(1)} does not exist"
        assert re.search(rf"^def {match.group(2)}\(", path.read_text(encoding="utf-8"), re.M), \
            f"{feature}: {match.group(1)} has no test {match.group(2)}"
