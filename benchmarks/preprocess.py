"""Preprocessing throughput: the Beam job versus a plain single-process loop.

Generates a sample dataset in the tiny-imagenet-200 layout (or uses
``--raw-dir``), then times, end to end and each in a fresh interpreter:

    (a) ``python -m preprocessing.task`` (the Beam job, DirectRunner defaults
        unless Beam flags are given after ``--``);
    (b) a plain loop: list the same files, read each, take its size from the
        JPEG header with PIL, ``schema.encode_example`` and write one
        ``tf.io.TFRecordWriter`` per split (no validation, no dead letters).

Prints images/s for both; the last line reads ``ratio_vs_plain_loop=X``
(Beam job / plain loop). Usage::

    python benchmarks/preprocess.py --images 20000
    python benchmarks/preprocess.py --raw-dir /data/tiny-imagenet-200 -- --direct_num_workers 2
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def generate(raw_dir, images, classes):
    """Writes a sample dataset of about ``images`` images (80% train, 10% val, 10% test)."""
    from preprocessing import sample

    spec = sample.SampleSpec(
        classes=classes,
        train_per_class=max(1, int(0.8 * images / classes)),
        val_per_class=max(1, int(0.1 * images / classes)),
        test_images=max(1, int(0.1 * images)),
    )
    info = sample.write_sample_dataset(raw_dir, spec)
    return len(info["train_boxes"]) + len(info["val"]) + len(info["test"])


def plain_loop(raw_dir, out_dir):
    """The baseline: one process, one pass, one TFRecordWriter per split. Returns the image count."""
    import io

    import tensorflow as tf
    from PIL import Image

    from contracts import schema

    wnids = sorted(open(os.path.join(raw_dir, "wnids.txt")).read().split())
    label_of = {w: i for i, w in enumerate(wnids)}
    annotations = open(os.path.join(raw_dir, "val", "val_annotations.txt")).read().splitlines()
    val_rows = {line.split("\t")[0]: line.split("\t")[1] for line in annotations}
    jobs = {
        "train": [
            (os.path.join(raw_dir, "train", w, "images", n), "train", label_of[w], w)
            for w in wnids
            for n in sorted(os.listdir(os.path.join(raw_dir, "train", w, "images")))
        ],
        "test": [
            (os.path.join(raw_dir, "val", "images", n), "val", label_of[val_rows[n]], val_rows[n])
            for n in sorted(os.listdir(os.path.join(raw_dir, "val", "images")))
        ],
        "unlabeled": [
            (os.path.join(raw_dir, "test", "images", n), "test", schema.NO_LABEL, "")
            for n in sorted(os.listdir(os.path.join(raw_dir, "test", "images")))
        ],
    }
    count = 0
    for split, rows in jobs.items():
        with tf.io.TFRecordWriter(os.path.join(out_dir, schema.shard_name(split, 0, 1))) as writer:
            for path, source, label, wnid in rows:
                with open(path, "rb") as f:
                    data = f.read()
                width, height = Image.open(io.BytesIO(data)).size
                writer.write(
                    schema.encode_example(
                        data,
                        height=height,
                        width=width,
                        filename=os.path.basename(path),
                        source_split=source,
                        label=label,
                        wnid=wnid,
                    )
                )
                count += 1
    return count


def _timed(cmd):
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return elapsed, result.stdout


def main(argv=None):
    """Command-line entry point."""
    argv = sys.argv[1:] if argv is None else argv
    beam_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000, help="Size of the generated dataset.")
    parser.add_argument("--classes", type=int, default=200, help="Classes of the generated dataset.")
    parser.add_argument("--raw-dir", help="Use this tiny-imagenet-200 folder instead of generating one.")
    parser.add_argument("--plain-loop-into", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_loop_into:
        print(plain_loop(args.raw_dir, args.plain_loop_into))
        return
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        raw = args.raw_dir
        if raw is None:
            raw = os.path.join(tmp, "raw")
            start = time.perf_counter()
            total = generate(raw, args.images, args.classes)
            print(f"generated {total} images in {time.perf_counter() - start:.1f} s", flush=True)
        job = [sys.executable, "-m", "preprocessing.task", "--raw-dir", raw]
        job_seconds, _ = _timed([*job, "--output-dir", os.path.join(tmp, "beam"), *beam_args])
        os.makedirs(os.path.join(tmp, "plain"))
        loop = [sys.executable, os.path.abspath(__file__), "--raw-dir", raw]
        loop_seconds, out = _timed([*loop, "--plain-loop-into", os.path.join(tmp, "plain")])
        images = int(out.strip().splitlines()[-1])
        job_rate, loop_rate = images / job_seconds, images / loop_seconds
        print(f"images={images} cpus={os.cpu_count()} load_average={os.getloadavg()[0]:.1f}")
        # Both end to end, each including its interpreter start and imports.
        print(f"beam_job: {job_seconds:.2f} s, {job_rate:.0f} images/s")
        print(f"plain_loop: {loop_seconds:.2f} s, {loop_rate:.0f} images/s")
        print(f"ratio_vs_plain_loop={job_rate / loop_rate:.2f}")


if __name__ == "__main__":
    main()
