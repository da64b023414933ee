"""Book vs modern recipe: test top-1 of the same low-data sample at a short and a long budget.

For every architecture, budget (epochs) and seed, two runs of
``python -m trainer.task`` on the same data with the same flags but
``--recipe book`` or ``--recipe modern`` (whose settings the rule in
:mod:`trainer.recipe` picks from the budget). The data is the generated sample
in the tiny-imagenet-200 layout converted by the project's Beam job (10% of
``train/`` held out as ``valid``); the test split is ``val/``. Prints one row
per run, a results table (mean and min-max over seeds), and per (arch,
budget) ``modern_minus_book=X`` (mean test top-1 difference). Usage::

    python benchmarks/recipes.py                                   # 40 and 120 epochs, 3 seeds
    python benchmarks/recipes.py --archs minception --budgets 40 --seeds 2
"""

import argparse
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _data  # noqa: E402
from benchmarks.small_data import train  # noqa: E402

RECIPES = ("book", "modern")


def _cell(values):
    low, high = min(values), max(values)
    return f"{statistics.mean(values):.3f} ({low:.3f}-{high:.3f})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default="minception,inception_v1")
    parser.add_argument("--budgets", default="40,120", help="Epochs of the short and the long run.")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed", type=int, default=1, help="Seeds run: first-seed, ..., first-seed + seeds - 1."
    )
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=30, help="Training images per class.")
    parser.add_argument("--test-per-class", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work-dir", help="Keep the data and runs here (default: a temporary folder).")
    args = parser.parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="recipes-bench-")
    print(f"classes={args.classes} per_class={args.per_class} batch_size={args.batch_size} work_dir={work}")
    _, records = _data.sample_records(
        os.path.join(work, "data"),
        classes=args.classes,
        train_per_class=args.per_class,
        val_per_class=args.test_per_class,
        valid_fraction=0.1,
    )
    results, seconds = {}, {}
    for budget in [int(b) for b in args.budgets.split(",")]:
        for arch in args.archs.split(","):
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for recipe in RECIPES:
                    job = os.path.join(work, "jobs", f"{arch}-{budget}-{recipe}-{seed}")
                    metrics, took = train(
                        records,
                        job,
                        arch,
                        epochs=budget,
                        batch_size=args.batch_size,
                        seed=seed,
                        extra=["--recipe", recipe],
                    )
                    accuracy = metrics["test"]["accuracy"]
                    results.setdefault((arch, budget, recipe), []).append(accuracy)
                    seconds.setdefault((arch, budget, recipe), []).append(took)
                    print(
                        f"{arch:13s} epochs={budget:4d} seed={seed} {recipe:6s}: test_top1={accuracy:.3f} "
                        f"best_epoch={metrics['best_epoch']} ({took:.0f}s)",
                        flush=True,
                    )
    print("\n| arch | epochs | book test top-1 | modern test top-1 | modern - book | s/run |")
    print("|---|---|---|---|---|---|")
    for (arch, budget, recipe), values in results.items():
        if recipe != "modern":
            continue
        book = results[(arch, budget, "book")]
        difference = statistics.mean(values) - statistics.mean(book)
        took = statistics.mean(seconds[(arch, budget, "book")] + seconds[(arch, budget, "modern")])
        print(f"| {arch} | {budget} | {_cell(book)} | {_cell(values)} | {difference:+.3f} | {took:.0f} |")
    for (arch, budget, recipe), values in results.items():
        if recipe == "modern":
            difference = statistics.mean(values) - statistics.mean(results[(arch, budget, "book")])
            print(f"{arch} epochs={budget} modern_minus_book={difference:+.3f}")


if __name__ == "__main__":
    main()
