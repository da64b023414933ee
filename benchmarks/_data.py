"""Records for the benchmarks, made the way users make them.

:func:`sample_records` writes a generated dataset in the tiny-imagenet-200
layout (:func:`preprocessing.sample.write_sample_dataset`) and converts it with
the project's own Beam job (:func:`preprocessing.task.run`, DirectRunner), so
the benchmarks read exactly what a training run reads. Benchmarks share no
code with the tests.
"""

import os

SPLITS = ("train", "valid", "test", "unlabeled")


def sample_records(
    work_dir,
    *,
    classes,
    train_per_class,
    val_per_class=0,
    test_images=0,
    num_shards=2,
    valid_fraction=0.0,
    seed=0,
    shortcut_patch=False,
):
    """Generates ``work_dir/raw`` and converts it into ``work_dir/records`` (each only when missing).

    Args:
        work_dir: Folder for the raw images and the records; kept between runs.
        classes: Classes to generate.
        train_per_class: ``train/`` images per class.
        val_per_class: Labelled ``val/`` images per class.
        test_images: Unlabelled ``test/`` images.
        num_shards: TFRecord shards of every split.
        valid_fraction: The job's ``--valid-fraction`` (0 keeps every ``train/`` image in ``train``).
        seed: Seed of the generator and of the job.
        shortcut_patch: Mark every image with its class's colour (``preprocessing.sample --shortcut-patch``).

    Returns:
        ``(raw_dir, records_dir)``.

    Raises:
        RuntimeError: The Beam job failed (its one-line error went to stderr).
    """
    from contracts import schema
    from preprocessing import sample, task

    raw_dir, records_dir = os.path.join(work_dir, "raw"), os.path.join(work_dir, "records")
    if not os.path.exists(os.path.join(raw_dir, "wnids.txt")):
        spec = sample.SampleSpec(
            classes=classes,
            train_per_class=train_per_class,
            val_per_class=val_per_class,
            test_images=test_images,
            seed=seed,
            shortcut_patch=shortcut_patch,
        )
        sample.write_sample_dataset(raw_dir, spec)
    if not os.path.exists(os.path.join(records_dir, schema.METADATA_FILE)):
        shards = [f"--num-shards-{split}={num_shards}" for split in SPLITS]
        flags = [f"--valid-fraction={valid_fraction}", f"--seed={seed}", "--overwrite", *shards]
        code = task.run(["--raw-dir", raw_dir, "--output-dir", records_dir, *flags])
        if code != 0:
            raise RuntimeError(f"python -m preprocessing.task exited with {code}")
    return raw_dir, records_dir
