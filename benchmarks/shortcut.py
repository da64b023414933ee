"""Shortcut alarm: how often it fires on data with a shortcut and on the same data without one.

For every seed, two runs of ``python -m trainer.task`` with the same flags:
one on a generated sample whose images carry a small marker in a
class-specific colour (``preprocessing.sample --shortcut-patch``: only the
marker separates the classes), one on the clean sample of the same seed. Both
are converted by the project's Beam job with a fifth of ``train/`` held out as
``valid``, the Grad-CAM callback's probe set. Each run probes every epoch
(``--explain-every 1``) with the alarm's streak ``--shortcut-probes``. Prints
one row per run (validation accuracy, pointing game and its centre baseline
at the last probe, the alarm and its epoch), then ``alarm_rate_marked=X``
and ``alarm_rate_clean=Y``: the alarm is right when the first is 1 and the
second 0. Usage::

    python benchmarks/shortcut.py                       # seeds 1-3, 3 classes, 3 epochs
    python benchmarks/shortcut.py --seeds 5 --epochs 6 --probes 3
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

# The flags of tests/trainer/test_shortcut.py: dropout off and no precise
# batch-norm pass keep a 3-epoch run short and let it learn the marker.
FLAGS = ["--dropout", "0", "--precise-bn", "0", "--monitor-start-epoch", "0", "--explain-every", "1"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="minception")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--classes", type=int, default=3, help="At most 9 (one marker colour each).")
    parser.add_argument("--per-class", type=int, default=60, help="train/ images per class.")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--probes", type=int, default=2, help="The alarm's streak, --shortcut-probes.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work-dir", help="Keep the data and runs here (default: a temporary folder).")
    args = parser.parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="shortcut-bench-")
    print(f"arch={args.arch} classes={args.classes} epochs={args.epochs} work_dir={work}", flush=True)
    alarms = {"marked": [], "clean": []}
    for seed in range(1, args.seeds + 1):
        for name, marked in (("marked", True), ("clean", False)):
            _, records = _data.sample_records(
                os.path.join(work, f"data-{name}-{seed}"),
                classes=args.classes,
                train_per_class=args.per_class,
                val_per_class=4,
                valid_fraction=0.2,
                seed=seed,
                shortcut_patch=marked,
            )
            metrics, took = train(
                records,
                os.path.join(work, "jobs", f"{name}-{seed}"),
                args.arch,
                epochs=args.epochs,
                batch_size=args.batch_size,
                seed=seed,
                extra=[*FLAGS, "--shortcut-probes", str(args.probes)],
                explain=True,
            )
            found = metrics["explanations"]
            alarms[name].append(found["shortcut_alarm"])
            print(
                f"seed={seed} {name:6s}: val_top1={found['val_accuracy']:.3f} "
                f"pointing_game={found['pointing_game']:.3f} centre={found['center_baseline']:.3f} "
                f"alarm={found['shortcut_alarm']} epoch={found['epoch']} ({took:.0f}s)",
                flush=True,
            )
    for name, raised in alarms.items():
        print(f"alarm_rate_{name}={statistics.mean(raised):.2f}")


if __name__ == "__main__":
    main()
