"""A run's fixed cost: ``python -m trainer.task`` versus a plain Keras fit, stage by stage.

Both sides train the same model (``trainer.models.build_model``, the
trainer's optimizer) on the same ``tf.data`` streams (``trainer.data``) for
the same steps, each in a fresh interpreter, so each pays its own imports and
tracing:

* ``trainer``: ``python -m trainer.task`` with a quick run's flags; its last
  line (``seconds per stage: ...``, :mod:`trainer.stages`) gives the stages.
* ``plain fit``: ``model.compile(...)``, ``model.fit(..., validation_data=valid)``,
  ``model.evaluate`` of valid and test, and ``model.save`` of a ``.keras``
  file, timed with the same clock.

Stages: ``import`` (up to TensorFlow, Keras and the project imported),
``build`` (data, model, callbacks: up to the first step), ``first step``
(tracing included), ``steps`` (the other steps, the epochs' validation and
callbacks), ``evaluation`` (the final statistics and evaluation) and
``export`` (the saved model; the trainer's SavedModel export unless
``--no-export``). The data is the generated sample in the tiny-imagenet-200
layout converted by the project's Beam job (``benchmarks/_data.py``), as the
tests make theirs. The two commands alternate ``--repeats`` times; the table
shows each stage's median and the ratio of the totals::

    python benchmarks/overhead.py                   # 1 epoch of 2 steps, 3 repeats
    python benchmarks/overhead.py --epochs 2 --steps-per-epoch 2 --repeats 1
    python benchmarks/overhead.py --trainer-flags "--explain false --precise-bn 0"
"""

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Run as a script too (python benchmarks/overhead.py): the repository root holds the packages.
sys.path.insert(0, ROOT)

from trainer import stages  # noqa: E402  (standard library only: TensorFlow loads in the children)

SIDES = ("trainer", "plain fit")


def quick_flags(args, data_dir, job_dir):
    """The trainer's flags of the measured run (a quick run, as the tests' QUICK)."""
    flags = ["--data-dir", data_dir, "--job-dir", job_dir, "--arch", args.arch]
    flags += ["--batch-size", str(args.batch_size), "--epochs", str(args.epochs)]
    flags += ["--steps-per-epoch", str(args.steps_per_epoch), "--validation-steps", "1"]
    flags += ["--monitor-start-epoch", "0", "--export", str(not args.no_export).lower()]
    return flags + shlex.split(args.trainer_flags)


def plain_fit(argv):
    """The baseline, in this interpreter: prints its ``seconds per stage`` line on stdout."""
    clock = stages.StageClock()
    import keras

    from contracts import dataset
    from trainer import data, models, optimizers, task, train

    clock.lap("import")
    config = task.resolve(argv)
    info = dataset.load_metadata(config.data_dir)
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_dtype_policy(config.mixed_precision)
    steps = config.steps_per_epoch
    streams = {
        split: data.for_run(
            config, info, split, split == "train", **({"steps_per_epoch": steps} if split == "train" else {})
        )
        for split in ("train", "valid", "test")
    }
    options = train.model_build_options(config, models.get_defaults(config.arch), info.image_size)
    model = models.build_model(config.arch, info.num_classes, seed=config.seed, **options)
    names = model.output_names if len(model.outputs) > 1 else None
    loss = "sparse_categorical_crossentropy"
    model.compile(
        optimizer=optimizers.make_optimizer(
            config, model, learning_rate=config.learning_rate, steps_per_epoch=steps, start_epoch=0
        ),
        loss=dict.fromkeys(names, loss) if names else loss,
        metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(5)] if not names else None,
        jit_compile=config.jit_compile,
    )
    model.fit(
        streams["train"],
        epochs=config.epochs,
        steps_per_epoch=steps,
        validation_data=streams["valid"],
        validation_steps=config.validation_steps,
        callbacks=[stages.callback(clock)],
        shuffle=False,  # The stream shuffles itself.
        verbose=0,
    )
    clock.lap("steps")
    for split in ("valid", "test"):
        model.evaluate(streams[split], verbose=0)
    clock.lap("evaluation")
    os.makedirs(config.job_dir, exist_ok=True)
    model.save(os.path.join(config.job_dir, "model.keras"))
    clock.lap("export")
    print(clock.summary(), flush=True)
    return 0


def measure(side, flags):
    """Runs one side in a fresh interpreter; returns its ``stage -> seconds`` plus ``wall``."""
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if side == "trainer":
        command = [sys.executable, "-m", "trainer.task", *flags]
    else:
        command = [sys.executable, os.path.abspath(__file__), "--plain-fit", *flags]
    start = time.monotonic()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{side} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    for line in reversed((proc.stdout + proc.stderr).splitlines()):
        seconds = stages.parse(line)
        if seconds is not None:
            return {**seconds, "wall": wall}
    raise RuntimeError(f"{side} printed no '{stages.LINE_PREFIX}' line:\n{proc.stderr[-3000:]}")


def table(runs):
    """The rows ``(stage, trainer s, plain-fit s)``: each stage's median over the runs."""
    rows = []
    for stage in (*stages.STAGES, "total", "wall"):
        medians = [statistics.median(run.get(stage, 0.0) for run in runs[side]) for side in SIDES]
        rows.append((stage, *medians))
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--plain-fit"]:
        return plain_fit(argv[1:])
    from contracts import quiet

    quiet.quiet_tensorflow([])  # The Beam job below loads TensorFlow in this process too.
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="minception")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps-per-epoch", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each side (alternating).")
    parser.add_argument("--no-export", action="store_true", help="The trainer with --export false.")
    parser.add_argument("--trainer-flags", default="", help="More trainer flags (both sides read them).")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="overhead-bench-")
    _, records = _records(work)
    runs = {side: [] for side in SIDES}
    for repeat in range(args.repeats):
        for side in SIDES if repeat % 2 == 0 else reversed(SIDES):
            job = os.path.join(work, "jobs", f"{side.replace(' ', '-')}-{repeat}")
            runs[side].append(measure(side, quick_flags(args, records, job)))
            print(f"{side} run {repeat + 1}/{args.repeats}: {runs[side][-1]['total']:.1f} s", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.arch}, {args.epochs} epoch(s) x {args.steps_per_epoch} steps, median of {args.repeats}")
    print(f"{'stage':<12}{'trainer s':>11}{'plain fit s':>13}{'ratio':>8}")
    for stage, ours, plain in table(runs):
        ratio = f"{ours / plain:.2f}" if plain > 0 else "-"
        print(f"{stage:<12}{ours:>11.1f}{plain:>13.1f}{ratio:>8}")
    totals = {side: statistics.median(run["total"] for run in runs[side]) for side in SIDES}
    print(f"overhead ratio: {totals['trainer'] / totals['plain fit']:.2f}x")
    return 0


def _records(work):
    from benchmarks import _data

    return _data.sample_records(
        os.path.join(work, "data"),
        classes=5,
        train_per_class=40,
        val_per_class=8,
        test_images=6,
        valid_fraction=0.1,
        seed=1,
    )


if __name__ == "__main__":
    sys.exit(main())
