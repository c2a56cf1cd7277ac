"""The figures quoted outside the reference tables, checked against them.

    python benchmarks/report.py --check      # exit 1 on any figure that does not match its source

Checks, in this order:
1. RESULTS.md is what ``benchmarks/paper/report.py`` writes from the JSON runs under ``results/`` (and
   ``results/notes.md``);
2. every figure of the README's "Headline figures" (each **bold** number of a bullet) appears, as a whole number,
   in the section of BENCHMARKS.md or RESULTS.md that the bullet links to, so a re-measured table cannot leave the
   README behind.

Without ``--check`` it prints each headline figure beside its source section.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = "## Headline figures"


def slug(heading: str) -> str:
    """A Markdown heading's anchor as GitHub writes it: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def sections(markdown: str) -> dict[str, str]:
    """Anchor -> the text of that heading's section (up to the next heading of the same or a higher level), plus
    '' for the whole document."""
    found: dict[str, str] = {"": markdown}
    headings = [(m.start(), len(m.group(1)), m.group(2)) for m in re.finditer(r"^(#{1,6}) (.+)$", markdown, re.M)]
    for i, (start, level, title) in enumerate(headings):
        end = next((s for s, lvl, _ in headings[i + 1:] if lvl <= level), len(markdown))
        found[slug(title)] = markdown[start:end]
    return found


@dataclass
class Figure:
    value: str
    document: str
    anchor: str
    line: str


def headline_figures(readme: str) -> list[Figure]:
    """The bold figures of each bullet under the README's headline heading, with the table each bullet links to."""
    start = readme.index(HEADLINE)
    end = readme.find("\n## ", start + len(HEADLINE))
    block = readme[start:end if end >= 0 else len(readme)]
    figures = []
    for bullet in re.split(r"\n- ", block)[1:]:
        links = re.findall(r"\]\(((?:BENCHMARKS|RESULTS)\.md)(?:#([^)]+))?\)", bullet)
        if not links:
            raise ValueError(f"README headline without a link to its table: {bullet[:80]!r}")
        document, anchor = links[0]
        for value in re.findall(r"\*\*([^*]+)\*\*", bullet):
            figures.append(Figure(value, document, anchor, " ".join(bullet.split())[:90]))
    return figures


def check_figures(root: Path = ROOT) -> list[str]:
    """A message for every README headline figure that is not in its linked section."""
    readme = (root / "README.md").read_text(encoding="utf-8")
    problems, cache = [], {}
    for figure in headline_figures(readme):
        if figure.document not in cache:
            cache[figure.document] = sections((root / figure.document).read_text(encoding="utf-8"))
        found = cache[figure.document]
        if figure.anchor not in found:
            problems.append(f"{figure.document}#{figure.anchor}: no such section (figure {figure.value!r})")
        elif not re.search(r"(?<![\d.])" + re.escape(figure.value) + r"(?!\.?\d)", found[figure.anchor]):
            problems.append(f"README figure {figure.value!r} is not in {figure.document}#{figure.anchor} "
                            f"({figure.line})")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    problems = []
    results = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paper" / "report.py"), "--check"],
                             cwd=ROOT, capture_output=True, text=True)
    if results.returncode != 0:
        problems.append(results.stderr.strip() or "RESULTS.md is out of date")
    problems += check_figures()
    if not args.check:
        for figure in headline_figures((ROOT / "README.md").read_text(encoding="utf-8")):
            print(f"{figure.value:>10}  {figure.document}#{figure.anchor}")
    for problem in problems:
        print("FAILED:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
