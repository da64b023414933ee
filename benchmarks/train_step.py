"""Training throughput: our job path versus plain ``model.fit`` on in-memory arrays.

Our path is what ``python -m trainer.task`` runs: TFRecords written by the Beam
job (``benchmarks/_data.py``) -> ``trainer.data.make_dataset`` ->
``DistributedLoop`` (``strategy.run`` train step). The baseline is Keras'
``model.fit`` on the same architecture fed numpy arrays already in memory (no
decoding, no augmentation), i.e. an upper bound for the input side. Prints
images/s per architecture and the ratio ours / baseline (target >= 0.95).
With ``--mixing-cost`` it also times our path with mixup/CutMix and label
smoothing in the train step (``trainer.mixing.Mixer``, one of the two per
batch) and prints the added milliseconds per step and the ratio.

Usage::

    python -m benchmarks.train_step --steps 20 --batch-size 32
    python -m benchmarks.train_step --arch inception_resnet_v2 --steps 5 --mixed-precision --jit-compile
    python -m benchmarks.train_step --arch minception --mixing-cost
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

# Run as a script too (python benchmarks/train_step.py): the repository root holds the packages.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ARCHS = ("inception_v1", "minception", "inception_resnet_v2")


def _records(work_dir, classes, per_class):
    from benchmarks import _data

    return _data.sample_records(work_dir, classes=classes, train_per_class=per_class, num_shards=2)[1]


def _build(arch, info, precision):
    """Returns ``(model, policy, input_size)``: ``arch`` built for its default augmentation policy."""
    import keras

    from contracts import policy as policy_lib
    from trainer import models

    policy = models.get_defaults(arch).augmentation
    size = policy_lib.output_size(policy, info.image_size, 56)
    keras.mixed_precision.set_dtype_policy(precision)
    model = models.build_model(arch, info.num_classes, input_size=size, weights=None, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    return model, policy, size


def ours(arch, info, args, mixing=False):
    """Images/s of our loop over our tf.data pipeline (default strategy), optionally with mixup/CutMix."""
    import tensorflow as tf

    from trainer import data, loop, models
    from trainer import mixing as mixing_lib

    model, policy, _ = _build(arch, info, args.precision)
    strategy = tf.distribute.get_strategy()
    runner = loop.DistributedLoop(
        strategy,
        model,
        models.main_output_model(model),
        num_classes=info.num_classes,
        global_batch_size=args.batch_size,
        aux_loss_weight=models.get_defaults(arch).aux_loss_weight,
        jit_compile=args.jit_compile,
        mixer=mixing_lib.Mixer(info.num_classes, mixup=0.2, cutmix=1.0, label_smoothing=0.1)
        if mixing
        else None,
    )
    dataset = data.make_dataset(
        info,
        "train",
        global_batch_size=args.batch_size,
        training=True,
        policy=policy,
        augment_on="host",
        cache=True,
    )
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    for _ in range(args.warmup):
        runner.train_step(iterator)
    start = time.perf_counter()
    for _ in range(args.steps):
        stats = runner.train_step(iterator)
    float(stats["count"])  # Waits for the last step.
    return args.steps * args.batch_size / (time.perf_counter() - start)


def baseline(arch, info, args):
    """Images/s of ``model.fit`` on in-memory numpy arrays of the same shape."""
    import keras
    import numpy as np

    model, _, size = _build(arch, info, args.precision)
    outputs = model.output_names if len(model.outputs) > 1 else None
    loss = (
        dict.fromkeys(outputs, "sparse_categorical_crossentropy")
        if outputs
        else "sparse_categorical_crossentropy"
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, jit_compile=args.jit_compile)
    rng = np.random.default_rng(0)
    count = args.batch_size * (args.steps + args.warmup)
    x = rng.uniform(0, 255, size=(count, size, size, 3)).astype("float32")
    y = rng.integers(0, info.num_classes, size=count).astype("int32")
    targets = dict.fromkeys(outputs, y) if outputs else y

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 == args.warmup:
                self.start = time.perf_counter()

    timer = Timer()
    model.fit(x, targets, batch_size=args.batch_size, epochs=1, verbose=0, callbacks=[timer], shuffle=False)
    return args.steps * args.batch_size / (time.perf_counter() - timer.start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", choices=ARCHS, help="Architectures (default: all).")
    parser.add_argument("--steps", type=int, default=10, help="Timed training steps.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps (tracing).")
    parser.add_argument("--batch-size", type=int, default=32, help="Batch size.")
    parser.add_argument(
        "--mixed-precision", dest="precision", nargs="?", const="mixed_float16", default="float32"
    )
    parser.add_argument("--jit-compile", action="store_true", help="XLA for both paths.")
    parser.add_argument("--mixing-cost", action="store_true", help="Also time mixup/CutMix in the step.")
    args = parser.parse_args(argv)
    if args.warmup < 1:
        # The baseline's timer starts at the end of the last warm-up step.
        parser.error("--warmup must be >= 1")
    from contracts import dataset

    work_dir = tempfile.mkdtemp(prefix="bench-")
    records = _records(work_dir, classes=5, per_class=max(20, args.batch_size * 2 // 5 + 1))
    info = dataset.load_metadata(records)
    rows = []
    for arch in args.arch or ARCHS:
        steps = args.steps if arch != "inception_resnet_v2" else max(2, args.steps // 4)
        run_args = argparse.Namespace(**{**vars(args), "steps": steps})
        ours_rate, base_rate = ours(arch, info, run_args), baseline(arch, info, run_args)
        mixed_rate = ours(arch, info, run_args, mixing=True) if args.mixing_cost else None
        rows.append((arch, steps, ours_rate, base_rate, mixed_rate))
    print(f"{'arch':<22}{'steps':>6}{'ours img/s':>12}{'fit img/s':>12}{'ratio':>8}")
    for arch, steps, ours_rate, base_rate, _ in rows:
        print(f"{arch:<22}{steps:>6}{ours_rate:>12.1f}{base_rate:>12.1f}{ours_rate / base_rate:>8.2f}")
    for arch, _, ours_rate, _, mixed_rate in rows:
        if mixed_rate is not None:
            cost_ms = 1000 * args.batch_size * (1 / mixed_rate - 1 / ours_rate)
            print(
                f"{arch} mixing_cost_ms_per_step={cost_ms:.1f} mixed_over_plain={mixed_rate / ours_rate:.2f}"
            )
    shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
