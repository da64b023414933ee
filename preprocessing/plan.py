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
    """

    classes: sources.ClassTable
    shards: tuple
    rejected: tuple
    planned: dict


def _required_text(root, relative):
    path = fetch.join(root, relative)
    if not fetch.exists(path):
        raise sources.LayoutError(f"{relative} is missing in {root}: not a complete tiny-imagenet-200 folder")
    return fetch.read_text(path)


def _class_listing(root, wnid):
    folder = fetch.join(root, "train", wnid, "images")
    names = fetch.list_names(folder)
    boxes_path = fetch.join(root, "train", wnid, f"{wnid}_boxes.txt")
    boxes_text = fetch.read_text(boxes_path) if fetch.exists(boxes_path) else ""
    return wnid, names, sources.parse_boxes(boxes_text, f"{wnid}_boxes.txt")


def read_classes(root):
    """Returns the :class:`ClassTable` of the dataset at ``root``.

    Raises:
        LayoutError: When ``wnids.txt`` is missing or empty.
    """
    wnids = sources.parse_wnids(_required_text(root, "wnids.txt"))
    words_path = fetch.join(root, "words.txt")
    words = sources.parse_words(fetch.read_text(words_path), wnids) if fetch.exists(words_path) else {}
    return sources.ClassTable(wnids, words)


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
        LayoutError: When a required file or folder is missing.
    """
    classes = read_classes(root)
    annotations = sources.parse_val_annotations(_required_text(root, "val/val_annotations.txt"))
    # Listing is I/O bound (hundreds of folders, round trips on gs://): threads help.
    with concurrent.futures.ThreadPoolExecutor(LISTING_THREADS) as pool:
        listings = list(pool.map(lambda wnid: _class_listing(root, wnid), classes.wnids))
        val_names = pool.submit(fetch.list_names, fetch.join(root, "val", "images"))
        test_names = pool.submit(fetch.list_names, fetch.join(root, "test", "images"))
    items = {split: [] for split in num_shards}
    for wnid, names, boxes in listings:
        if not names:
            raise sources.LayoutError(f"train/{wnid}/images is missing or empty in {root}")
        for split, split_items in sources.train_items(
            classes, wnid, names, boxes, seed, valid_fraction
        ).items():
            items[split].extend(split_items)
    items["test"], rejected = sources.val_items(classes, val_names.result(), annotations)
    items["unlabeled"] = sources.unlabeled_items(test_names.result())
    shards = []
    for split, count in num_shards.items():
        for index, shard_items in enumerate(sources.assign_shards(items[split], count, seed)):
            shards.append((split, index, count, tuple(shard_items)))
    return Plan(
        classes=classes,
        shards=tuple(shards),
        rejected=tuple(rejected),
        planned={split: len(split_items) for split, split_items in items.items()},
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
