"""The trainer's view of the dataset contract: training streams with the run's augmentation.

:func:`contracts.dataset.make_dataset` reads, shuffles, batches and decodes;
this module only decides where augmentation runs: ``augment_on="host"``
augments in the ``tf.data`` pipeline with an :class:`trainer.augment.Augmenter`,
``augment_on="device"`` leaves training images at the source size for the
training step to augment. Evaluation streams get the policy's evaluation
transform either way. ``augment_on`` is validated once, in
:class:`trainer.config.TrainConfig`.
"""

from contracts import dataset
from contracts import policy as policy_lib
from trainer import augment


def augments(policy, *, flip=False, randaugment=None, random_erasing=0.0):
    """Whether training images are augmented at all (a policy, or any option on top of one)."""
    return policy != "none" or bool(flip or randaugment or random_erasing)


def make_dataset(
    info,
    split,
    *,
    training=False,
    policy="none",
    augment_on="host",
    crop_size=None,
    augment_options=None,
    **kwargs,
):
    """Returns the ``tf.data`` stream of ``split`` as the trainer reads it.

    Args:
        info: A :class:`contracts.dataset.DatasetInfo`.
        split: ``train``, ``valid``, ``test`` or ``unlabeled``.
        training: Shuffle and augment (only for ``train``).
        policy: Augmentation policy (:data:`contracts.policy.POLICIES`).
        augment_on: ``host`` augments here; ``device`` yields un-augmented training images.
        crop_size: Crop side of the ``crop`` policy; ``None``: 7/8 of the images' side
            (:func:`contracts.policy.default_crop_size`).
        augment_options: Keyword arguments of :class:`trainer.augment.Augmenter` on top of
            the policy (``flip``, ``randaugment``, ``random_erasing``;
            :meth:`trainer.config.TrainConfig.augment_options`).
        **kwargs: Passed to :func:`contracts.dataset.make_dataset` (batch size, seed, cache, and
            for a resumed training stream ``steps_per_epoch``, ``initial_epoch``, ``initial_step``).
    """
    augmenter = None
    augment_options = augment_options or {}
    if training and augment_on == "host" and augments(policy, **augment_options):
        augmenter = augment.Augmenter(policy, info.image_size, crop_size, **augment_options)
    crop_size = policy_lib.resolve_crop_size(info.image_size, crop_size)
    return dataset.make_dataset(
        info, split, training=training, policy=policy, augment=augmenter, crop_size=crop_size, **kwargs
    )


def for_run(config, info, split, training, **kwargs):
    """The dataset of ``split`` with a run's settings (a :class:`TrainConfig`); ``kwargs`` as
    :func:`make_dataset`'s (``input_context``, a training stream's position)."""
    return make_dataset(
        info,
        split,
        global_batch_size=config.batch_size,
        training=training,
        policy=config.policy,
        augment_on=config.augment_on,
        crop_size=config.crop_size,
        cache=config.cache,
        seed=config.seed,
        augment_options=config.augment_options(),
        **kwargs,
    )


def distributed(strategy, config, info, split, training, start=None):
    """Returns the distributed dataset of ``split`` for a run of ``config`` (a :class:`TrainConfig`).

    ``start`` is ``(epoch, step, steps_per_epoch)`` of a training stream: where it begins and how long
    its epochs are.
    """
    position = {}
    if start is not None:
        epoch, step, steps_per_epoch = start
        position = {"initial_epoch": epoch, "initial_step": step, "steps_per_epoch": steps_per_epoch}

    def make(input_context):
        return for_run(config, info, split, training, input_context=input_context, **position)

    return strategy.distribute_datasets_from_function(make)
