"""Reads the raw folder's listings and text files and decides every output shard.

The plan (class table, split of every file, contents of every shard, inputs
rejected before any image is read) is made once in the launching process, so
it is identical across re-runs, runners and worker counts.
"""

import concurrent.futures
import dataclasses

from preprocessing import fetch, sources
from preprocessing.transforms import ShardTask

LISTING_THREADS = 16


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the pipeline has to do.

    Attributes:
        classes: The :class:`preprocessing.sources.ClassTable`.
        shards: One ``(split, index, num_shards, items)`` per output shard.
        rejected: :class:`preprocessing.sources.Rejected` inputs found while planning.
        planned: ``{split: number of images planned}``.
        found: Inputs found: every entry listed under the image folders
            (:func:`preprocessing.fetch.list_image_folder`) plus every name
            ``val_annotations.txt`` lists without a file. Each one becomes
            exactly one record or one dead letter.
        missing: How many of ``found`` are ``val_annotations.txt`` names without a file.
    """

    classes: sources.ClassTable
    shards: tuple
    rejected: tuple
    planned: dict
    found: int
    missing: int


def _required_text(root, relative):
    path = fetch.join(root, relative)
    if not fetch.exists(path):
        raise sources.LayoutError(f"{relative} is missing in {root}: not a complete tiny-imagenet-200 folder")
    return fetch.read_text(path)


def _list(root, relative):
    """Returns ``(readable names, rejected entries, every entry listed)`` of one image folder."""
    listed = fetch.list_image_folder(root, relative)
    names, rejected = [], []
    for entry in listed:
        if entry.problem is None:
            names.append(entry.name)
        else:
            path = relative if entry.name is None else f"{relative}/{entry.name}"
            rejected.append(sources.Rejected(sources.printable(path), entry.problem))
    return names, rejected, listed


def _class_listing(root, folder, classes):
    """Lists ``train/<folder>``: ``(folder, names, boxes, rejected, found)``."""
    relative = f"train/{folder}/images"
    names, rejected, listed = _list(root, relative)
    found = len(listed)
    if folder not in classes.index:
        reason = f"train/{sources.printable(folder)} is not a class listed in wnids.txt"
        rejected += [sources.Rejected(sources.printable(f"{relative}/{name}"), reason) for name in names]
        return folder, [], {}, rejected, found
    boxes_path = fetch.join(root, "train", folder, f"{folder}_boxes.txt")
    boxes_text = fetch.read_text(boxes_path) if fetch.exists(boxes_path) else ""
    boxes, conflicts = sources.parse_boxes(boxes_text, f"{folder}_boxes.txt")
    rejected += [sources.Rejected(f"{relative}/{n}", conflicts[n]) for n in names if n in conflicts]
    return folder, [n for n in names if n not in conflicts], boxes, rejected, found


def read_classes(root):
    """Returns the :class:`ClassTable` of the dataset at ``root``.

    Raises:
        LayoutError: When ``wnids.txt`` is missing, empty or malformed.
    """
    wnids = sources.parse_wnids(_required_text(root, "wnids.txt"))
    words_path = fetch.join(root, "words.txt")
    words = sources.parse_words(fetch.read_text(words_path), wnids) if fetch.exists(words_path) else {}
    return sources.ClassTable(wnids, words)


def _val(root, classes, annotations):
    """Items and rejects of ``val/images``, and ``(found, missing)`` counts."""
    names, rejected, listed = _list(root, "val/images")
    # A file refused while listing is rejected once, for that reason; its row is not used.
    refused = {entry.name for entry in listed} - set(names)
    rows = {n: v for n, v in annotations.rows.items() if n not in refused}
    conflicts = {n: v for n, v in annotations.conflicts.items() if n not in refused}
    missing = len((set(rows) | set(conflicts)) - set(names))
    items, more = sources.val_items(classes, names, sources.Annotations(rows, conflicts))
    return items, rejected + more, len(listed) + missing, missing


def make_plan(root, *, seed, valid_fraction, num_shards):
    """Lists the dataset at ``root`` and deals every image into a shard.

    Args:
        root: Dataset root (holds ``wnids.txt``).
        seed: Seed of the train/valid split and the shard order.
        valid_fraction: Fraction of each class's ``train/`` images that go to ``valid``.
        num_shards: ``{split: number of shards}`` for every split in ``schema.SPLITS``.

    Returns:
        A :class:`Plan`.

    Raises:
        LayoutError: When a required file or folder is missing, or a text file is malformed.
    """
    classes = read_classes(root)
    annotations = sources.parse_val_annotations(_required_text(root, "val/val_annotations.txt"))
    folders = sorted(set(classes.wnids) | set(fetch.list_class_folders(root)))
    # Listing is I/O bound (hundreds of folders, round trips on gs://): threads help.
    with concurrent.futures.ThreadPoolExecutor(LISTING_THREADS) as pool:
        listings = list(pool.map(lambda folder: _class_listing(root, folder, classes), folders))
        val = pool.submit(_val, root, classes, annotations)
        test = pool.submit(_list, root, "test/images")
    items = {split: [] for split in num_shards}
    rejected = []
    found = 0
    for folder, names, boxes, folder_rejected, folder_found in listings:
        if folder in classes.index and not folder_found:
            raise sources.LayoutError(f"train/{folder}/images is missing or empty in {root}")
        rejected += folder_rejected
        found += folder_found
        if names:
            for split, split_items in sources.train_items(
                classes, folder, names, boxes, seed, valid_fraction
            ).items():
                items[split].extend(split_items)
    items["test"], val_rejected, val_found, missing = val.result()
    test_names, test_rejected, test_listed = test.result()
    items["unlabeled"] = sources.unlabeled_items(test_names)
    shards = []
    for split, count in num_shards.items():
        for index, shard_items in enumerate(sources.assign_shards(items[split], count, seed)):
            shards.append((split, index, count, tuple(shard_items)))
    return Plan(
        classes=classes,
        shards=tuple(shards),
        rejected=tuple(rejected + val_rejected + test_rejected),
        planned={split: len(split_items) for split, split_items in items.items()},
        found=found + val_found + len(test_listed),
        missing=missing,
    )


def write_manifests(job_plan, staging_dir):
    """Writes one manifest per shard into ``staging_dir`` and returns the pipeline's tasks.

    Args:
        job_plan: A :class:`Plan`.
        staging_dir: A folder every worker can read (local for local runners, else ``gs://``).

    Returns:
        A list of :class:`preprocessing.transforms.ShardTask`.
    """
    tasks = []
    for split, index, count, items in job_plan.shards:
        manifest = fetch.join(staging_dir, f"{split}-{index:05d}-of-{count:05d}.json")
        tasks.append((ShardTask(split, index, count, manifest), items))

    def write(task_items):
        task, items = task_items
        fetch.write_bytes(task.manifest, sources.items_to_text(items).encode())

    with concurrent.futures.ThreadPoolExecutor(LISTING_THREADS) as pool:
        list(pool.map(write, tasks))
    return [task for task, _ in tasks]
