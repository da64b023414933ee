"""Per-class accounting: a class the dead letters left without train images fails the job.

The reject budget (``--max-reject-fraction``) looks at all inputs together: a
500-image class is 0.5% of tiny-imagenet's train images, so every one of them
could be rejected within the default 1%, and the job and the trainer would both
exit 0 with a class the model never sees. :func:`short_classes` looks at each
class's train images after the rejects, and says which rejects emptied it.
"""

import collections
import re

from preprocessing import plan

# Reasons named per class in the error line; the rest are counted.
NAMED_REASONS = 3
# A reason's detail after its first ": " (a decoder's message) varies per file, and so does the
# "photos.csv line 12: " a manifest row's reason starts with: both are left out of the summary.
REASON_CHARS = 80
_LINE_PREFIX = re.compile(r"^[^:]* line \d+: ")


def _reason(text):
    short = _LINE_PREFIX.sub("", text, count=1).split(": ", 1)[0]
    return short if len(short) <= REASON_CHARS else short[: REASON_CHARS - 3] + "..."


def _train_rejects(job_plan, dead_letters):
    """``{class index: Counter(reason)}`` of the rejected inputs that were meant for a class's train split.

    A rejected item of a train shard is its class's; so is an input rejected
    while listing whose class is known and whose split is train or not decided
    yet (:attr:`preprocessing.plan.Plan.rejected_classes`).
    """
    labels = dict(job_plan.rejected_classes)
    for split, _, _, items in job_plan.shards:
        if split == "train":
            labels.update((item.path, item.label) for item in items)
    by_class = collections.defaultdict(collections.Counter)
    for entry in dead_letters:
        label = labels.get(entry["path"])
        if label is not None and label >= 0:
            by_class[label][_reason(entry["reason"])] += 1
    return by_class


def _describe(index, count, job_plan, reasons):
    wnid, name = job_plan.classes.wnids[index], job_plan.classes.names[index]
    label = repr(name) if name == wnid else f"{name!r} ({wnid})"
    rejected = sum(reasons.values())
    if not rejected:
        return f"{label} has {count}, none rejected"
    common = reasons.most_common(NAMED_REASONS)
    named = ", ".join(f"{n} {reason}" for reason, n in common)
    others = rejected - sum(n for _, n in common)
    more = f", {others} for other reasons" if others else ""
    return f"{label} has {count}, {rejected} rejected ({named}{more})"


def short_classes(job_plan, train_counts, dead_letters, minimum):
    """The error line's text when a class has fewer than ``minimum`` train images, else ``None``.

    Args:
        job_plan: The :class:`preprocessing.plan.Plan`.
        train_counts: Train records per class index (``metadata.json``'s ``class_counts``).
        dead_letters: The ``{"path", "reason"}`` dicts of ``rejected.jsonl``.
        minimum: ``--min-train-per-class`` (0 turns the check off).

    Returns:
        ``"N of M classes have fewer than K train images ...: 'cat' has 0, 40 rejected (40 truncated or
        corrupt JPEG); ..."``, naming up to :data:`preprocessing.plan.NAMED_SMALL_CLASSES` classes,
        fewest images first; or ``None`` when every class has ``minimum``.
    """
    short = sorted((count, index) for index, count in enumerate(train_counts) if count < minimum)
    if not short:
        return None
    by_class = _train_rejects(job_plan, dead_letters)
    named = short[: plan.NAMED_SMALL_CLASSES]
    parts = [_describe(index, count, job_plan, by_class[index]) for count, index in named]
    more = f"; and {len(short) - len(named)} more" if len(short) > len(named) else ""
    return (
        f"{len(short)} of {len(train_counts)} classes have fewer than {minimum} train images after the "
        f"rejects (--min-train-per-class {minimum}): {'; '.join(parts)}{more}"
    )
