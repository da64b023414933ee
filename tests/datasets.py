"""Datasets for the tests, made by the project's own code paths.

Records come from the Beam job itself (:func:`write_records` runs
``preprocessing.task``), so the tests of the trainer and of the explanations
read exactly what users' runs read; there is no second writer of the contract.
:func:`read_classes` is an independent oracle: it reads the raw folder's text
files to check the job's class list against.
"""

import json
import os


def read_classes(raw_dir):
    """Returns ``[{index, wnid, name}]`` from a raw folder's wnids.txt/words.txt."""
    with open(os.path.join(raw_dir, "wnids.txt")) as f:
        wnids = sorted(line.strip() for line in f if line.strip())
    words = {}
    with open(os.path.join(raw_dir, "words.txt")) as f:
        for line in f:
            wnid, _, name = line.rstrip("\n").partition("\t")
            words[wnid] = name
    return [{"index": i, "wnid": w, "name": words.get(w, w)} for i, w in enumerate(wnids)]


def write_records(raw_dir, out_dir, *, num_shards=2, seed=42, valid_fraction=0.1):
    """Runs the Beam job (``python -m preprocessing.task``, DirectRunner) on a raw folder.

    The one writer of the dataset contract: the records every trainer and
    explain test reads are the Beam job's own output.

    Args:
        raw_dir: A folder in the tiny-imagenet-200 layout.
        out_dir: Where the job writes the shards and metadata.json.
        num_shards: Shards of every split.
        seed: The job's ``--seed`` (train/valid split and shard order).
        valid_fraction: The job's ``--valid-fraction`` (0 keeps every train/ image in ``train``).

    Returns:
        The metadata dict the job wrote.
    """
    from contracts import schema
    from preprocessing import task

    shards = [f"--num-shards-{split}={num_shards}" for split in ("train", "valid", "test", "unlabeled")]
    flags = [f"--seed={seed}", f"--valid-fraction={valid_fraction}", *shards]
    code = task.run(["--raw-dir", str(raw_dir), "--output-dir", str(out_dir), *flags])
    assert code == 0, f"preprocessing.task exited with {code}"
    with open(os.path.join(out_dir, schema.METADATA_FILE)) as f:
        return json.load(f)
