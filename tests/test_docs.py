"""Project text points only at what the repository holds: every docs/algorithm.md section cited by name exists,
and nothing cites the research notes the package was designed from (they do not ship with it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / n for n in names if n.endswith((".py", ".md", ".sh", ".cpp", ".cu", ".h", ".toml", ".yml"))]


def test_cited_algorithm_sections_exist():
    headings = set(re.findall(r"^## (.+)$", (ROOT / "docs" / "algorithm.md").read_text(encoding="utf-8"), re.M))
    cited: dict[str, set[str]] = {}
    for path in _tracked_text_files():
        if path.name == "test_docs.py":
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for first, second in re.findall(r'docs/algorithm\.md,[\s#]+"([^"]+)"(?:[\s#]+and[\s#]+"([^"]+)")?', text):
            for section in filter(None, (first, second)):  # (a citation may wrap onto the next line)
                cited.setdefault(" ".join(section.replace("#", " ").split()), set()).add(str(path.relative_to(ROOT)))
    assert len(cited) >= 8, "the docstrings cite the algorithm notes by section"
    missing = {section: sorted(paths) for section, paths in cited.items() if section not in headings}
    assert not missing, f"cited sections that docs/algorithm.md does not have: {missing}"


#: Words that narrate how the work went instead of what the project is: working periods by number, runs dated by
#: when in the work they happened. Name the commit or the date instead.
NARRATION = re.compile(r"\bsessions?\b|\bwork(?:ing)? periods?\b|\bearlier runs\b|\blate in the day\b", re.I)


def test_project_text_does_not_narrate_the_development():
    hits = []
    for path in _tracked_text_files():
        if path.name == "test_docs.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if NARRATION.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not hits, "text narrating the development (name the commit or the date instead):\n" + "\n".join(hits)


def test_the_narration_check_catches_what_it_names():
    for line in ("Session 5 rerun", "as in earlier sessions", "the second working period", "earlier runs gave",
                 "the host was slower late in the day"):
        assert NARRATION.search(line), line
    for line in ("torch.distributed process group", "the sessional", "run at commit 5c967f6 on 2026-12-03"):
        assert not NARRATION.search(line), line


def test_results_md_is_what_the_runs_give():
    """RESULTS.md is generated from the JSON runs under results/ (and results/notes.md); no hand edits drift."""
    done = subprocess.run([sys.executable, "benchmarks/paper/report.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_nothing_cites_the_design_notes_that_do_not_ship():
    offenders = [str(p.relative_to(ROOT)) for p in _tracked_text_files()
                 if p.name != "test_docs.py" and "ALGORITHM.md" in p.read_text(encoding="utf-8", errors="replace")]
    assert not offenders, f"files citing ALGORITHM.md: {offenders}"


def test_the_option_reference_is_current_and_complete():
    import importlib.util

    spec = importlib.util.spec_from_file_location("options_doc", ROOT / "scripts" / "options_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from marquardt.optim.config import OPTIONS

    assert sorted(module.MEANING) == sorted(OPTIONS), "every option needs its meaning in scripts/options_doc.py"
    assert module.main(["--check"]) == 0, "docs/options.md is out of date: python scripts/options_doc.py"


DOC_PAGES = sorted((ROOT / "docs").rglob("*.md"))
DOC_BLOCKS = [(page, i, block) for page in DOC_PAGES
              for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S))]


@pytest.mark.parametrize("page,index,block", DOC_BLOCKS,
                         ids=[f"{p.relative_to(ROOT / 'docs')}#{i}" for p, i, _ in DOC_BLOCKS])
def test_documentation_examples_run(page, index, block, capsys):
    import torch

    torch.manual_seed(0)
    exec(compile(block, f"{page.name} block {index}", "exec"), {"__name__": "docs"})
    assert capsys.readouterr().out.strip()  # every example prints what it produced
