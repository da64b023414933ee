"""A fixed, seeded choice of examples from a stream of batches, independent of shard order."""

import heapq
import zlib

import numpy as np


def _rank(seed, filename, index):
    # A hash of the file name, not the stream position: the choice does not
    # depend on shard order or on how the split is batched.
    return zlib.crc32(f"{seed}:{filename}".encode()), index


def select_examples(batches, num_images, seed=0, balanced=False, num_classes=None):
    """Chooses a fixed, seeded subset of a stream of example batches.

    Every example gets a rank from a hash of ``(seed, filename)``; the lowest
    ranks are kept, holding only ``num_images`` (or, balanced, a per-class
    quota) in memory. Balanced selection takes the best of every class first,
    then the second best, and so on.

    Args:
        batches: Iterable of dicts of numpy arrays with ``image``, ``label``,
            ``box``, ``has_box`` and ``filename``.
        num_images: How many examples to keep.
        seed: Seed of the choice.
        balanced: Spread the choice evenly over the classes.
        num_classes: Number of classes (required when ``balanced``).

    Returns:
        A dict of numpy arrays (same keys), in rank order.
    """
    quota = -(-num_images // num_classes) if balanced else num_images
    heaps = {}
    index = 0
    for batch in batches:
        for i in range(len(batch["label"])):
            name = batch["filename"][i]
            name = name.decode() if isinstance(name, bytes) else str(name)
            key = _rank(seed, name, index)
            index += 1
            group = int(batch["label"][i]) if balanced else 0
            heap = heaps.setdefault(group, [])
            item = (-key[0], -key[1], {k: v[i] for k, v in batch.items()})
            if len(heap) < quota:
                heapq.heappush(heap, item)
            elif item[:2] > heap[0][:2]:
                heapq.heapreplace(heap, item)
    chosen = []
    for heap in heaps.values():
        best_first = sorted(heap, key=lambda item: (-item[0], -item[1]))
        chosen += [(place, -item[0], -item[1], item[2]) for place, item in enumerate(best_first)]
    chosen = sorted(chosen, key=lambda item: item[:3])[:num_images]
    chosen = sorted(chosen, key=lambda item: item[1:3])
    if not chosen:
        return {}
    return {key: np.stack([item[3][key] for item in chosen]) for key in chosen[0][3]}
