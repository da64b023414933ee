"""Small folders: test top-1 of the from-scratch families with today's and the earlier batch-norm settings.

For every architecture, images-per-class and seed, two runs of
``python -m trainer.task`` with the same data, epochs and flags:

    (a) ``new``: the defaults (batch-norm momentum 0.9, ``--precise-bn auto``,
        the architecture's ``--monitor-start-epoch``);
    (b) ``old``: the behaviour before them (``--bn-momentum 0.99 --precise-bn 0
        --monitor-start-epoch 0``: Keras' momentum, moving averages evaluated,
        every epoch watched).

The data is the generated sample in the tiny-imagenet-200 layout converted by
the project's Beam job (10% of ``train/`` held out as ``valid``); the test
split is ``val/``. Prints one row per run, then per (arch, size) the mean test
accuracy of both settings and ``ratio_new_vs_old=X``. Usage::

    python benchmarks/small_data.py                      # 20, 50, 200 per class, 2 seeds
    python benchmarks/small_data.py --archs minception --sizes 30 --seeds 1 --epochs 20
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _data  # noqa: E402

SETTINGS = {
    "new": [],
    "old": ["--bn-momentum", "0.99", "--precise-bn", "0", "--monitor-start-epoch", "0"],
}


def train(records, job, arch, *, epochs, batch_size, seed, extra, explain=False):
    """Runs the trainer once (Grad-CAM callback on with ``explain``); returns metrics.json, wall time."""
    args = ["--data-dir", records, "--job-dir", job, "--arch", arch, "--epochs", str(epochs)]
    args += ["--seed", str(seed), "--explain", str(explain).lower(), *extra]
    if batch_size is not None:  # None: the trainer's default.
        args += ["--batch-size", str(batch_size)]
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.task", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{arch} {job} failed:\n{proc.stderr[-3000:]}")
    with open(os.path.join(job, "metrics.json")) as f:
        return json.load(f), time.time() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default="minception,inception_v1")
    parser.add_argument("--sizes", default="20,50,200", help="Training images per class (before the split).")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--test-per-class", type=int, default=25)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work-dir", help="Keep the data and runs here (default: a temporary folder).")
    args = parser.parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="small-data-bench-")
    print(
        f"classes={args.classes} epochs={args.epochs} batch_size={args.batch_size} work_dir={work}",
        flush=True,
    )
    results = {}
    for size in [int(s) for s in args.sizes.split(",")]:
        _, records = _data.sample_records(
            os.path.join(work, f"data-{size}"),
            classes=args.classes,
            train_per_class=size,
            val_per_class=args.test_per_class,
            valid_fraction=0.1,
        )
        for arch in args.archs.split(","):
            for seed in range(1, args.seeds + 1):
                for name, extra in SETTINGS.items():
                    job = os.path.join(work, "jobs", f"{arch}-{size}-{name}-{seed}")
                    metrics, seconds = train(
                        records,
                        job,
                        arch,
                        epochs=args.epochs,
                        batch_size=args.batch_size,
                        seed=seed,
                        extra=extra,
                    )
                    accuracy = metrics["test"]["accuracy"]
                    results.setdefault((arch, size, name), []).append(accuracy)
                    print(
                        f"{arch:13s} per_class={size:4d} seed={seed} {name}: test_top1={accuracy:.3f} "
                        f"best_epoch={metrics['best_epoch']} "
                        f"above_chance={metrics['chance']['better_than_chance']} ({seconds:.0f}s)",
                        flush=True,
                    )
    print("\n| arch | images/class | old test top-1 | new test top-1 | chance |\n|---|---|---|---|---|")
    for (arch, size, name), values in results.items():
        if name != "new":
            continue
        old = results[(arch, size, "old")]
        new_mean, old_mean = sum(values) / len(values), sum(old) / len(old)
        old_cells, new_cells = (" / ".join(f"{v:.3f}" for v in runs) for runs in (old, values))
        row = [
            arch,
            size,
            f"{old_mean:.3f} ({old_cells})",
            f"{new_mean:.3f} ({new_cells})",
            f"{1 / args.classes:.3f}",
        ]
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    for (arch, size, name), values in results.items():
        if name == "new":
            old = results[(arch, size, "old")]
            ratio = (sum(values) / len(values)) / max(sum(old) / len(old), 1e-9)
            print(f"{arch} per_class={size} ratio_new_vs_old={ratio:.2f}")


if __name__ == "__main__":
    main()
