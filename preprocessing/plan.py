"""Reads the raw source's listings and text files and decides every output shard.

The plan (class table, split of every file, contents of every shard, inputs
rejected before any image is read) is made once in the launching process, so
it is identical across re-runs, runners and worker counts. Which layout a
source has is decided by :mod:`preprocessing.layouts`; the tiny-imagenet-200
layout is planned here (:func:`make_plan`), the others from their
:class:`preprocessing.layouts.Listing` (:func:`plan_source`).
"""

import concurrent.futures
import dataclasses
import logging

from preprocessing import fetch, layouts, sources, splits, textfiles
from preprocessing.transforms import ShardTask

LOGGER = logging.getLogger("preprocessing")
LISTING_THREADS = 16
# How many small classes the warning names before it only counts the rest.
NAMED_SMALL_CLASSES = 10


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
        missing: How many of ``found`` are ``val_annotations.txt`` names (or
            manifest rows) without a file.
        layout: The layout's name (:mod:`preprocessing.layouts`).
        root: What item paths are relative to (the dataset root, or the manifest's folder).
        skipped: Hidden and system files of a folder tree, not inputs.
        rejected_classes: ``{path: class index}`` of the inputs rejected while planning that would
            have been train images of that class (their split is train or not decided yet), for
            the per-class accounting (:mod:`preprocessing.accounting`).
    """

    classes: sources.ClassTable
    shards: tuple
    rejected: tuple
    planned: dict
    found: int
    missing: int
    layout: str = layouts.TINY_IMAGENET
    root: str = ""
    skipped: int = 0
    rejected_classes: dict = dataclasses.field(default_factory=dict)

    def describe_inputs(self):
        """What the found inputs are, in the layout's own terms (the job's accounting line)."""
        if self.layout == layouts.MANIFEST:
            return f"{self.found} manifest rows, {self.missing} of them without a file"
        if self.layout == layouts.FOLDERS:
            return f"{self.found} files; {self.skipped} hidden or system files skipped, not inputs"
        return f"{self.found - self.missing} files, {self.missing} val_annotations.txt names without a file"


def _required_text(root, relative):
    path = fetch.join(root, relative)
    if not fetch.exists(path):
        raise sources.LayoutError(f"{relative} is missing in {root}: not a complete tiny-imagenet-200 folder")
    return textfiles.read_text_input(path)


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
    boxes_text = textfiles.read_text_input(boxes_path) if fetch.exists(boxes_path) else ""
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
    words_text = textfiles.read_text_input(words_path) if fetch.exists(words_path) else ""
    words = sources.parse_words(words_text, wnids)
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
    rejected, rejected_classes = [], {}
    found = 0
    for folder, names, boxes, folder_rejected, folder_found in listings:
        if folder in classes.index and not folder_found:
            raise sources.LayoutError(f"train/{folder}/images is missing or empty in {root}")
        rejected += folder_rejected
        if folder in classes.index:  # Rejected before the train/valid split: counted as train's.
            rejected_classes.update((r.path, classes.index[folder]) for r in folder_rejected)
        found += folder_found
        if names:
            for split, split_items in sources.train_items(
                classes, folder, names, boxes, seed, valid_fraction
            ).items():
                items[split].extend(split_items)
    items["test"], val_rejected, val_found, missing = val.result()
    test_names, test_rejected, test_listed = test.result()
    items["unlabeled"] = sources.unlabeled_items(test_names)
    return Plan(
        classes=classes,
        shards=_shards(items, num_shards, seed),
        rejected=tuple(rejected + val_rejected + test_rejected),
        planned={split: len(split_items) for split, split_items in items.items()},
        found=found + val_found + len(test_listed),
        missing=missing,
        root=root,
        rejected_classes=rejected_classes,
    )


def _shards(items, num_shards, seed):
    shards = []
    for split, count in num_shards.items():
        for index, shard_items in enumerate(sources.assign_shards(items.get(split, []), count, seed)):
            shards.append((split, index, count, tuple(shard_items)))
    return tuple(shards)


def _warn_small(small):
    named = ", ".join(repr(name) for name in small[:NAMED_SMALL_CLASSES])
    more = f" and {len(small) - NAMED_SMALL_CLASSES} more" if len(small) > NAMED_SMALL_CLASSES else ""
    LOGGER.warning(
        "%d classes have fewer than %d images to split and go to train only: %s%s",
        len(small),
        splits.MIN_IMAGES,
        named,
        more,
    )


def _split_entries(listing, shown_as, *, seed, valid_fraction, test_fraction):
    """``{split: [Entry]}`` of a listing: the source's own splits kept, the others carved."""
    given = {entry.split for entry in listing.entries if entry.split}
    if "test" not in given and test_fraction == 0:
        # Refused before any image is read: a trainer would find no test data only at its end.
        raise sources.LayoutError(
            f"{shown_as} has no test split (no test/ folder, no manifest row with split test) and "
            "--test-fraction is 0: pass --test-fraction (e.g. 0.1) or give a test split"
        )
    fractions = splits.carved_fractions(valid_fraction, test_fraction, given)
    pools = {}
    for entry in listing.entries:
        if entry.split is None:
            pools.setdefault(entry.label, []).append(entry.path)
    carved, small = splits.carve(pools, seed, fractions)
    if small:
        _warn_small(small)
    dealt = {}
    for entry in listing.entries:
        dealt.setdefault(entry.split or carved[entry.path], []).append(entry)
    if not dealt.get("test"):
        raise sources.LayoutError(
            f"{shown_as}: no image would be in the test split (no class has {splits.MIN_IMAGES} images "
            "whose split is left to the job): give a test split or more images"
        )
    return dealt


def plan_source(source, *, layout, seed, valid_fraction, test_fraction, num_shards, shown_as=None):
    """Plans any layout: detects it (:func:`preprocessing.layouts.detect`), lists it, splits and shards it.

    Args:
        source: What :func:`preprocessing.fetch.fetch_raw_dir` returned.
        layout: ``--layout``.
        seed: Seed of the splits and the shard order.
        valid_fraction, test_fraction: Shares of each class carved where the source gives no such split.
        num_shards: ``{split: number of shards}`` for every split in ``schema.SPLITS``.
        shown_as: The ``--raw-dir`` as given, for messages.

    Returns:
        A :class:`Plan`; tiny-imagenet-200 is planned by :func:`make_plan`, as it always was.

    Raises:
        LayoutError: When the source has none of the layouts, or no test split while
            ``test_fraction`` is 0 (before any image is read).
        preprocessing.fetch.SourceError: When a tiny-imagenet source has no (or several) ``wnids.txt``.
    """
    shown_as = shown_as or source
    name, root = layouts.detect(source, layout, shown_as)
    if name == layouts.TINY_IMAGENET:
        return make_plan(root, seed=seed, valid_fraction=valid_fraction, num_shards=num_shards)
    if name == layouts.MANIFEST:
        listing = layouts.list_manifest(root)
    else:
        listing = layouts.list_folders(root, auto=layout == "auto")
    # A class whose every image was rejected while listing stays in the table, with no images: the
    # per-class accounting names it (preprocessing.accounting) instead of letting it vanish.
    labels = {entry.label for entry in listing.entries}
    labels |= {label for label, _ in listing.rejected_labels.values()}
    classes = sources.ClassTable(sorted(labels), {})
    dealt = _split_entries(
        listing, shown_as, seed=seed, valid_fraction=valid_fraction, test_fraction=test_fraction
    )
    items = {
        split: [sources.Item(e.path, e.word, classes.index[e.label], e.box) for e in entries]
        for split, entries in dealt.items()
    }
    return Plan(
        classes=classes,
        shards=_shards(items, num_shards, seed),
        rejected=tuple(listing.rejected),
        planned={split: len(items.get(split, [])) for split in num_shards},
        found=listing.found,
        missing=listing.missing,
        layout=name,
        root=listing.root,
        skipped=listing.skipped,
        rejected_classes={
            path: classes.index[label]
            for path, (label, split) in listing.rejected_labels.items()
            if split in (None, "train")
        },
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
