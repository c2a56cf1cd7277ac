"""The installed package's annotations hold up under mypy (py.typed ships them to users), and the examples,
which use only the public API, type-check against them."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory) -> Path:
    """One cache for both runs: the second reuses the first's analysis of torch (most of the time)."""
    return tmp_path_factory.mktemp("mypy_cache")


@pytest.mark.parametrize("target", [["-p", "marquardt"], [str(EXAMPLES)]], ids=["package", "examples"])
def test_mypy_passes(target, mypy_cache):
    api = pytest.importorskip("mypy.api")
    stdout, stderr, status = api.run(
        target + ["--ignore-missing-imports", "--no-error-summary", "--cache-dir", str(mypy_cache)])
    assert status == 0, stdout + stderr
