"""Prints the demo's results table: test top-1/top-5 and the pointing game per architecture.

A pointing game that ``explain.task`` skipped (no boxes) reads ``skipped`` in
the table, and its reason is printed once below it; a game whose boxes cover
the whole image keeps its numbers, with one line below the table saying that
they cannot tell the model from its baselines.

Usage: python scripts/demo_summary.py DEMO_DIR
"""

import os
import sys

from contracts import jobdir
from explain import pointing

ARCHS = ("minception", "inception_v1", "inception_resnet_v2")


def rows(demo_dir):
    """Yields one result row per architecture found under ``demo_dir/jobs``."""
    for arch in ARCHS:
        job = os.path.join(demo_dir, "jobs", arch)
        metrics = jobdir.read_json(os.path.join(job, jobdir.METRICS_FILE))
        if metrics is None:
            continue
        results = os.path.join(job, jobdir.FOLDERS["logs"], jobdir.EXPLAIN_LOGS, jobdir.EXPLAIN_RESULTS_FILE)
        explain = jobdir.read_json(results) or {}
        game = explain.get("pointing_game", {})
        yield {
            "arch": arch,
            "epochs": metrics.get("epochs_completed"),
            "top1": metrics["test"]["accuracy"],
            "top5": metrics["test"]["top5_accuracy"],
            "hit_rate": game.get("hit_rate"),
            "center": game.get("center_baseline"),
            "random": game.get("random_baseline"),
            "skipped": game.get("skipped"),
            "uninformative": game.get("uninformative"),
        }


def notes(table):
    """The lines said once below the table: each distinct skip reason, then one uninformative flag."""
    lines = list(dict.fromkeys(pointing.skipped_line(row["skipped"]) for row in table if row["skipped"]))
    flagged = [row["arch"] for row in table if row["uninformative"]]
    if flagged:
        lines.append(
            f"{pointing.UNINFORMATIVE} ({', '.join(flagged)}): most boxes cover the whole image, "
            "so its centre and random baselines hit too"
        )
    return lines


def _fmt(value):
    return "-" if value is None else f"{value:.3f}"


def main(argv):
    """Prints the table and the TensorBoard command; exit 1 when no run finished."""
    demo_dir = argv[1] if len(argv) > 1 else "demo-run"
    table = list(rows(demo_dir))
    if not table:
        print(f"no finished runs under {demo_dir}/jobs", file=sys.stderr)
        return 1
    header = f"{'architecture':<22}{'epochs':>7}{'test top-1':>12}{'test top-5':>12}"
    header += f"{'pointing game':>15}{'centre':>9}{'random':>9}"
    print(header)
    print("-" * len(header))
    for row in table:
        print(
            f"{row['arch']:<22}{row['epochs']:>7}{_fmt(row['top1']):>12}{_fmt(row['top5']):>12}"
            f"{'skipped' if row['skipped'] else _fmt(row['hit_rate']):>15}"
            f"{_fmt(row['center']):>9}{_fmt(row['random']):>9}"
        )
    for line in notes(table):
        print(line)
    print()
    print("Look at the curves, augmented samples, confusion matrices and Grad-CAM panels with:")
    print(f"  tensorboard --logdir {os.path.join(demo_dir, 'jobs')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
