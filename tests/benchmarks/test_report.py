"""benchmarks/report.py: the README's headline figures are the ones in the tables they link to."""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.report import ROOT, check_figures, headline_figures, sections, slug


def test_the_readme_headlines_match_their_tables():
    figures = headline_figures((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(figures) >= 5
    assert check_figures() == []


def _copy(tmp_path: Path) -> Path:
    for name in ("README.md", "BENCHMARKS.md", "RESULTS.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_a_figure_the_table_does_not_have_is_reported(tmp_path):
    root = _copy(tmp_path)
    readme = (root / "README.md").read_text(encoding="utf-8")
    first = headline_figures(readme)[0].value  # (whatever the README quotes now)
    assert f"**{first}**" in readme
    (root / "README.md").write_text(readme.replace(f"**{first}**", "**987.65×**", 1), encoding="utf-8")
    problems = check_figures(root)
    assert len(problems) == 1 and "'987.65×'" in problems[0]


def test_a_remeasured_table_leaves_the_readme_behind(tmp_path):
    root = _copy(tmp_path)
    benchmarks = (root / "BENCHMARKS.md").read_text(encoding="utf-8")
    (root / "BENCHMARKS.md").write_text(benchmarks.replace("99.05%", "98.95%"), encoding="utf-8")
    assert any("'99.05%'" in p for p in check_figures(root))


def test_a_link_to_a_missing_section_is_reported(tmp_path):
    root = _copy(tmp_path)
    readme = (root / "README.md").read_text(encoding="utf-8")
    (root / "README.md").write_text(readme.replace("#1-native-ops-on-the-cpu", "#1-native-ops"), encoding="utf-8")
    assert any("no such section" in p for p in check_figures(root))


def test_anchors_and_sections_follow_githubs_headings():
    assert slug("9. When momentum acts: the default rule (`compare_lm_step`)") == \
        "9-when-momentum-acts-the-default-rule-compare_lm_step"
    doc = "# A\nintro\n## B. one\nb text\n### C\nc text\n## D\nd text\n"
    found = sections(doc)
    assert "c text" in found["b-one"] and "d text" not in found["b-one"]
    assert found["c"].strip() == "### C\nc text"


def test_a_figure_must_be_a_whole_number_of_its_section(tmp_path):
    (tmp_path / "README.md").write_text("# x\n\n## Headline figures\n\n- after **4** steps ([t](BENCHMARKS.md#t))\n",
                                        encoding="utf-8")
    (tmp_path / "RESULTS.md").write_text("", encoding="utf-8")
    for table, matches in (("## T\n14 steps, 0.4 s\n", False), ("## T\n4 steps\n", True),
                           ("## T\n4.5 steps\n", False), ("## T\n(4) steps\n", True)):
        (tmp_path / "BENCHMARKS.md").write_text(table, encoding="utf-8")
        assert (check_figures(tmp_path) == []) is matches, table
