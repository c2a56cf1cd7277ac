"""Side-by-side op timings with ratios; ``--check`` exits non-zero when a target ratio is missed.

    python benchmarks/compare_ops.py                 # CPU cases of the foundation issue
    python benchmarks/compare_ops.py --check         # ... and enforce the targets
    python benchmarks/compare_ops.py --sweep         # CPU JᵀJ and solves at the optimizer's sizes
    python benchmarks/compare_ops.py --device cuda   # GPU sweep (used by benchmarks/gpu_check.sh)

Ratios are baseline time / our time (> 1 means ours is faster): the median over interleaved rounds of the
ratio within each round, so that slow drifts of a shared machine cancel.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from marquardt import ops

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ops_cases import Case, gemm_rate, jtj_case, solve_case  # noqa: E402
from benchmarks.timing import (  # noqa: E402
    git_revision,
    machine_description,
    ratios_to,
    sample_side_by_side,
    sync,
)

# (case-name prefix, baseline, minimum ratio) checked by --check on the CPU.
CPU_TARGETS = [
    ("jtj rows=8192 n=2048 float32", "J.T @ J", 1.6),
    ("jtj rows=8192 n=2048 float64", "J.T @ J", 1.6),
    ("solve n=2048 float32", "linalg.solve", 1.3),
    ("solve n=2048 float64", "linalg.solve", 1.3),
]
GPU_TARGETS = [
    ("jtj rows=8192 n=4096 float32", "J.T @ J", 1.5),
    ("jtj rows=65536 n=4096 float32", "J.T @ J", 1.5),
    ("jtj rows=8192 n=8192 float32", "J.T @ J", 1.5),
    ("jtj rows=65536 n=8192 float32", "J.T @ J", 1.5),
    ("solve n=1024 float32", "cholesky+cholesky_solve", 1.0),
    ("solve n=4096 float32", "cholesky+cholesky_solve", 1.0),
    ("solve n=8192 float32", "cholesky+cholesky_solve", 1.0),
]


def cpu_cases() -> list[Case]:
    return [
        jtj_case(8192, 2048, torch.float32, "cpu"),
        jtj_case(8192, 2048, torch.float64, "cpu"),
        solve_case(2048, torch.float32, "cpu"),
        solve_case(2048, torch.float64, "cpu"),
    ]


# Shapes of the optimizer's accumulations (small networks, the sine MLPs' dual systems, the paper CNN's
# 2202 parameters, curve fits with many points) for --sweep: the default kernel must not lose to the GEMM
# one away from the target shape.
CPU_SWEEP_SHAPES = [
    (64, 64),
    (1000, 100),
    (100, 1000),
    (1000, 1000),
    (1000, 4353),
    (4000, 2202),
    (20000, 300),
    (1000000, 10),
    (100000, 32),
    (200000, 100),
]


# Sizes of the optimizer's damped solves for --sweep: dual systems of 500-1000 rows, primal ones of the
# 1-64-64-1 MLP (4353 parameters).
CPU_SWEEP_SOLVES = [256, 500, 1000, 4353]


def cpu_sweep_cases() -> list[Case]:
    dtypes = (torch.float32, torch.float64)
    jtj = [jtj_case(rows, n, dtype, "cpu") for dtype in dtypes for rows, n in CPU_SWEEP_SHAPES]
    return jtj + [solve_case(n, dtype, "cpu") for dtype in dtypes for n in CPU_SWEEP_SOLVES]


def gpu_cases(quick: bool, jtj_only: bool = False) -> list[Case]:
    rows_list = [8192] if quick else [8192, 65536]
    ns = [1024, 4096] if quick else [1024, 4096, 8192]
    cases = []
    for dtype in (torch.float32, torch.float64):
        for rows in rows_list:
            for n in ns:
                case = jtj_case(rows, n, dtype, "cuda")
                if dtype == torch.float32:
                    add_tf32_and_syrk(case, rows, n)
                cases.append(case)
    if jtj_only:
        return cases
    for dtype in (torch.float32, torch.float64):
        for n in ns:
            cases.append(solve_case(n, dtype, "cuda"))
    return cases


def add_tf32_and_syrk(case: Case, rows: int, n: int) -> None:
    """Extra float32 baselines on the GPU: cuBLAS GEMM with TF32, and cuBLAS SYRK through CuPy if present."""
    J = torch.randn(rows, n, device="cuda")

    def matmul_tf32():
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return J.T @ J
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False

    case.candidates["J.T @ J (TF32)"] = matmul_tf32
    try:
        import cupy
        from cupy import cublas

        Jc = cupy.from_dlpack(J)
        out = cupy.zeros((n, n), dtype=cupy.float32, order="F")

        def syrk():
            # J row-major is Jᵀ column-major; cuBLAS SYRK of it computes JᵀJ (one triangle).
            return cublas.syrk("T", Jc, out=out, alpha=1.0, beta=0.0, lower=False)

        syrk()
        case.candidates["cuBLAS syrk (CuPy)"] = syrk
    except Exception as exc:  # noqa: BLE001 - CuPy is optional; say why it is missing
        print(f"# cuBLAS SYRK baseline unavailable: {exc}", file=sys.stderr)


def run(cases: list[Case], device: str, repeats: int) -> list[dict]:
    rows = []
    for case in cases:
        samples = sample_side_by_side(case.candidates, device, repeats=repeats)
        times = {name: statistics.median(v) for name, v in samples.items()}
        ratios = ratios_to(samples, case.ours)  # per-round ratios: the machine's drift cancels
        for name, t in times.items():
            rows.append(
                {
                    "case": case.name,
                    "candidate": name,
                    "seconds": t,
                    "gflops": case.flops / t / 1e9,
                    "ratio_vs_ours": ratios[name],
                }
            )
        del case
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def print_table(rows: list[dict], machine: str, extra: str = "") -> None:
    print(f"\n# machine: {machine}   git: {git_revision()}{extra}")
    print(f"{'case':<34} {'candidate':<38} {'median ms':>10} {'GFLOP/s*':>10} {'time/ours':>10}")
    for r in rows:
        print(
            f"{r['case']:<34} {r['candidate']:<38} {r['seconds'] * 1e3:>10.2f} {r['gflops']:>10.1f} "
            f"{r['ratio_vs_ours']:>10.2f}"
        )
    print("* useful flops: rows*n^2 for JᵀJ (the symmetric half), n^3/3 for a Cholesky factorisation")


def check(rows: list[dict], targets: list[tuple[str, str, float]]) -> bool:
    ok = True
    for prefix, baseline, minimum in targets:
        match = [r for r in rows if r["case"] == prefix and r["candidate"] == baseline]
        if not match:
            continue
        ratio = match[0]["ratio_vs_ours"]
        status = "ok" if ratio >= minimum else "MISSED"
        ok &= ratio >= minimum
        print(f"check: {prefix}: {ratio:.2f}x vs {baseline} (target >= {minimum}x) {status}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="smaller GPU sweep")
    parser.add_argument("--jtj-only", action="store_true", help="GPU: only the JᵀJ cases")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target ratio is missed")
    parser.add_argument("--sweep", action="store_true", help="CPU: JᵀJ and solves at the optimizer's sizes instead")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    machine = machine_description(args.device)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        cases, targets = gpu_cases(args.quick, args.jtj_only), GPU_TARGETS
        rate32 = gemm_rate(8192, torch.float32, "cuda", lambda: sync("cuda"))
        rate64 = gemm_rate(8192, torch.float64, "cuda", lambda: sync("cuda"))
    else:
        cases, targets = (cpu_sweep_cases(), []) if args.sweep else (cpu_cases(), CPU_TARGETS)
        rate32 = gemm_rate(2048, torch.float32, "cpu", lambda: None)
        rate64 = gemm_rate(2048, torch.float64, "cpu", lambda: None)
    rows = run(cases, args.device, args.repeats)
    extra = f"\n# measured square GEMM rate: float32 {rate32 / 1e9:.1f} GFLOP/s, float64 {rate64 / 1e9:.1f} GFLOP/s"
    if args.device == "cpu":
        extra += f"\n# jtj_accumulate_ CPU kernel: {ops.cpu_syrk_kernel()} (MARQUARDT_CPU_SYRK overrides)"
    print_table(rows, machine, extra)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "gemm_rate": [rate32, rate64], "rows": rows}, indent=1))
    ok = check(rows, targets)
    return 0 if (ok or not args.check) else 1


if __name__ == "__main__":
    sys.exit(main())
