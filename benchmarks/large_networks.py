"""Block-diagonal LM on networks the dense solve cannot hold, against Adam in the same CPU time (scaling issue).

    python benchmarks/large_networks.py --model cnn100k --epochs 3        # the 99.0% target
    python benchmarks/large_networks.py --model mlp1m --iterations 30     # a 1M-parameter network
    python benchmarks/large_networks.py --model mlp100k --quick           # 20 iterations, 2000 test images
    python benchmarks/large_networks.py --model mlp100k --solver dual --lam-floor 10   # the exact GGN (factored)

LM runs with ``solver="block_diagonal"`` (one block per output unit of each layer, or ``--blocks N`` for
groups of N) and the exact GGN from a tenth of each batch of 600 (``curvature_samples=0.1``); Adam (lr 1e-3)
then gets the same batches for the same CPU time. One thread, CPU seconds of the steps only. Test accuracy
is taken at fixed fractions of LM's run and at the same CPU times for Adam. The dense n×n system of these
networks would need n²·4 bytes: 56 GB at 118k parameters, 4.9 TB at 1.1M.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import marquardt  # noqa: E402
from benchmarks.paper.mnist import batches, evaluate  # noqa: E402
from benchmarks.paper.mnist_data import load  # noqa: E402
from benchmarks.paper.models import mnist_cnn, mnist_mlp  # noqa: E402

MODELS = {"cnn100k": (mnist_cnn, "100k"), "cnn1m": (mnist_cnn, "1m"), "mlp100k": (mnist_mlp, "100k"),
          "mlp1m": (mnist_mlp, "1m")}


def run(args) -> dict:
    x, y = load("train", args.data_dir)
    x_test, y_test = load("test", args.data_dir)
    if args.validation:  # choose settings on train[:50000] / train[50000:], never on the test set
        x, y, x_test, y_test = x[:50000], y[:50000], x[50000:], y[50000:]
    if args.eval_limit:
        x_test, y_test = x_test[: args.eval_limit], y_test[: args.eval_limit]
    build, size = MODELS[args.model]
    batch = min(args.batch, x.shape[0])
    per_epoch = x.shape[0] // batch
    iterations = args.iterations or args.epochs * per_epoch
    checkpoints = sorted({max(1, round(iterations * f)) for f in (0.05, 0.1, 0.25, 0.5, 0.75, 1.0)}
                         | {e * per_epoch for e in range(1, iterations // per_epoch + 1)})
    model = build(size, args.seed)
    n = sum(p.numel() for p in model.parameters())
    blocks = int(args.blocks) if args.blocks.isdigit() else args.blocks
    samples = int(args.curvature_samples) if args.curvature_samples >= 1 else args.curvature_samples  # count
    opt = marquardt.LevenbergMarquardt(model, "cross_entropy", solver=args.solver, blocks=blocks,
                                       curvature_samples=samples, memory_budget=args.memory_budget,
                                       lambda_min_minibatch=args.lam_floor)
    order = batches(x.shape[0], batch, args.seed)
    lm_points, clock, rss0 = [], 0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for it in range(1, iterations + 1):
        idx = next(order)
        t0 = time.process_time()
        info = opt.step(x[idx], y[idx])
        clock += time.process_time() - t0
        if it in checkpoints:
            acc, _ = evaluate(model, x_test, y_test)
            lm_points.append((it, clock, acc))
            print(f"LM   it {it:4d} ({it / per_epoch:.2f} epochs)  {clock:8.1f} s  test accuracy {acc:.4f}  λ {info.lam:.3g}",
                  flush=True)
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    blocks_used = opt.chooser.blocks or []
    largest = max((int(b.numel()) for b in blocks_used), default=0)

    model = build(size, args.seed)
    adam = torch.optim.Adam(model.parameters(), lr=args.adam_lr)
    order = batches(x.shape[0], batch, args.seed)
    adam_points, clock, it = [], 0.0, 0
    # a validation run compares λ floors, and --no-adam reuses an earlier run's Adam curve
    targets = [t for _, t, _ in lm_points] if not (args.validation or args.no_adam) else []
    while targets:
        idx = next(order)
        t0 = time.process_time()
        adam.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        adam.step()
        clock += time.process_time() - t0
        it += 1
        if clock >= targets[0]:
            acc, _ = evaluate(model, x_test, y_test)
            adam_points.append((it, clock, acc))
            print(f"Adam it {it:4d} ({it / per_epoch:.2f} epochs)  {clock:8.1f} s  test accuracy {acc:.4f}", flush=True)
            targets.pop(0)
    return {"model": args.model, "parameters": n, "solver": args.solver, "form": info.form,
            "cg_iterations_last": info.cg_iterations, "lam_floor": args.lam_floor, "validation": args.validation,
            "batch": batch, "blocks": len(blocks_used), "largest_block": largest,
            "curvature_samples": args.curvature_samples, "peak_rss_growth_mib": peak_mib, "lm": lm_points,
            "adam": adam_points, "adam_lr": args.adam_lr}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="cnn100k")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--iterations", type=int, default=None, help="instead of --epochs")
    p.add_argument("--solver", default="block_diagonal", choices=["block_diagonal", "dual", "auto"],
                   help="'dual': the exact GGN in row space (the factored PCG solve for MLPs)")
    p.add_argument("--blocks", default="unit", help="'unit', 'layer' or a group size")
    p.add_argument("--curvature-samples", type=float, default=0.1, help="a fraction of the batch, or a count >= 1")
    p.add_argument("--memory-budget", type=int, default=3 * 2**30)
    p.add_argument("--lam-floor", type=float, default=1.0, help="lambda_min_minibatch (the mini-batch λ floor)")
    p.add_argument("--validation", action="store_true", help="train on train[:50000], evaluate on train[50000:]")
    p.add_argument("--no-adam", action="store_true", help="LM only")
    p.add_argument("--batch", type=int, default=600, help="mini-batch size (LM and Adam)")
    p.add_argument("--adam-lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="20 iterations, 2000 test images")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=Path("results/scaling"))
    args = p.parse_args(argv)
    if args.quick:
        args.iterations, args.eval_limit = args.iterations or 20, args.eval_limit or 2000
    torch.set_num_threads(1)
    result = run(args)
    print(f"{result['model']}: {result['parameters']} parameters, {result['form']} form, {result['blocks']} blocks "
          f"(largest {result['largest_block']}); peak RSS grew {result['peak_rss_growth_mib']:.0f} MiB")
    for (it, t, acc), (a_it, _, a_acc) in zip(result["lm"], result["adam"]):
        print(f"  after {t:8.1f} CPU s: LM {acc:.4f} ({it} it)   Adam {a_acc:.4f} ({a_it} it)")
    args.out.mkdir(parents=True, exist_ok=True)
    tag = ("_val" if args.validation else "") + (f"_floor{args.lam_floor:g}" if args.lam_floor != 1.0 else "")
    tag += f"_batch{args.batch}" if args.batch != 600 else ""
    tag += f"_cs{args.curvature_samples:g}" if args.curvature_samples != 0.1 else ""
    tag += f"_{args.solver}" if args.solver != "block_diagonal" else ""
    path = args.out / f"{args.model}_seed{args.seed}{tag}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
