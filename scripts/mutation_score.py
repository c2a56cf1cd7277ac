"""The mutation score per module and per package, from the results mutmut left in ./mutants.

    python scripts/mutation_score.py [--equivalents FILE] [--min-score PERCENT]

A mutant counts as caught when a test failed on it, when it broke the import or a type check, or when it ran
past its CPU limit (an endless loop is a mistake the tests noticed). It counts as missed when every test that
reaches it passed, or when no test reaches it at all. Mutants listed in the equivalents file (one name per
line, then ``#`` and the reason) behave exactly like the original code and are left out of the score; a
listed name that was caught, or that mutmut no longer generates, is reported so that the list stays true.
Exits 1 when a package scores below --min-score.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections import Counter, defaultdict

from mutmut.stats import status_by_exit_code

CAUGHT = {"killed", "timeout", "caught by type check", "segfault"}
MISSED = {"survived", "no tests", "suspicious"}


def read_equivalents(path: pathlib.Path | None) -> dict[str, str]:
    if path is None or not path.exists():
        return {}
    listed = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, _, reason = line.partition("#")
        if name.strip() and not line.startswith("#"):
            listed[name.strip()] = reason.strip()
    return listed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--equivalents", type=pathlib.Path, default=None)
    parser.add_argument("--min-score", type=float, default=0.0, help="percent per package; 0 checks nothing")
    parser.add_argument("--mutants", type=pathlib.Path, default=pathlib.Path("mutants"))
    args = parser.parse_args(argv)

    equivalents = read_equivalents(args.equivalents)
    by_module: dict[str, Counter] = defaultdict(Counter)
    seen: dict[str, str] = {}
    for meta in sorted(args.mutants.rglob("*.meta")):
        module = str(meta.relative_to(args.mutants))[: -len(".py.meta")].replace("/", ".")
        for name, code in json.loads(meta.read_text(encoding="utf-8")).get("exit_code_by_key", {}).items():
            status = status_by_exit_code[code]
            seen[name] = status
            if name in equivalents:
                status = "equivalent"
            by_module[module][status] += 1

    def line(label: str, counts: Counter) -> float:
        caught = sum(counts[s] for s in CAUGHT)
        missed = sum(counts[s] for s in MISSED)
        score = 100.0 * caught / max(caught + missed, 1)
        print(f"{label:40s} caught {caught:5d} (timeouts {counts['timeout']:3d})  missed {missed:4d}  "
              f"equivalent {counts['equivalent']:3d}  not checked {counts['not checked']:4d}  score {score:5.1f}%")
        return score

    by_package: dict[str, Counter] = defaultdict(Counter)
    for module, counts in sorted(by_module.items()):
        line(module, counts)
        by_package[".".join(module.split(".")[:2])].update(counts)
    print()
    failed = []
    for package, counts in sorted(by_package.items()):
        if line(package, counts) < args.min_score:
            failed.append(package)
    # only names in the modules of this run: a run on one file says nothing about the others' entries
    listed_here = [name for name in equivalents if any(name.startswith(m + ".") for m in by_module)]
    stale = [name for name in listed_here if seen.get(name, "missing") not in MISSED | {"not checked"}]
    for name in stale:
        print(f"listed as equivalent but {seen.get(name, 'not generated')}: {name}")
    if failed:
        print(f"below {args.min_score:.0f}%: {', '.join(failed)}")
    return 1 if failed or stale else 0


if __name__ == "__main__":
    sys.exit(main())
