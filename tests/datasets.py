"""Helpers that build small datasets for the tests (no Beam involved).

``write_records`` writes shards and ``metadata.json`` exactly as the schema
describes them, straight from a generated raw folder. Tests of the trainer and
of the explanations use it so that they do not depend on the Beam job; the Beam
job's own tests compare its output against the raw folder.
"""

import json
import os

import tensorflow as tf

from preprocessing import schema


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


def write_records(raw_dir, out_dir, *, num_shards=2, valid_every=10):
    """Writes train/valid/test shards and metadata.json for a generated raw folder.

    Every ``valid_every``-th training image of a class goes to ``valid``.

    Returns:
        The metadata dict that was written.
    """
    os.makedirs(out_dir, exist_ok=True)
    classes = read_classes(raw_dir)
    index = {c["wnid"]: c["index"] for c in classes}
    names = {c["wnid"]: c["name"] for c in classes}
    records = {"train": [], "valid": [], "test": []}
    for wnid in sorted(index):
        with open(os.path.join(raw_dir, "train", wnid, f"{wnid}_boxes.txt")) as f:
            rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
        for i, (name, *box) in enumerate(rows):
            split = "valid" if valid_every and i % valid_every == 0 else "train"
            path = os.path.join(raw_dir, "train", wnid, "images", name)
            records[split].append((path, name, "train", wnid, tuple(int(v) for v in box)))
    with open(os.path.join(raw_dir, "val", "val_annotations.txt")) as f:
        for line in f:
            name, wnid, *box = line.rstrip("\n").split("\t")
            path = os.path.join(raw_dir, "val", "images", name)
            records["test"].append((path, name, "val", wnid, tuple(int(v) for v in box)))
    splits = {}
    for split, rows in records.items():
        shards = [schema.shard_name(split, i, num_shards) for i in range(num_shards)]
        writers = [tf.io.TFRecordWriter(os.path.join(out_dir, s)) for s in shards]
        for k, (path, name, source, wnid, box) in enumerate(rows):
            with open(path, "rb") as f:
                data = f.read()
            writers[k % num_shards].write(
                schema.encode_example(
                    data,
                    height=64,
                    width=64,
                    filename=name,
                    source_split=source,
                    label=index[wnid],
                    wnid=wnid,
                    class_name=names[wnid],
                    box=box,
                )
            )
        for w in writers:
            w.close()
        splits[split] = {"count": len(rows), "shards": shards}
    metadata = {
        "schema_version": schema.SCHEMA_VERSION,
        "source": raw_dir,
        "seed": 0,
        "valid_fraction": 1.0 / valid_every if valid_every else 0.0,
        "image_size": [64, 64],
        "classes": classes,
        "splits": splits,
        "rejected": {"count": 0, "file": schema.REJECTED_FILE},
    }
    with open(os.path.join(out_dir, schema.METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2)
    return metadata
