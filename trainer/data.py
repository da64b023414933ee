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
from trainer import augment


def make_dataset(info, split, *, training=False, policy="none", augment_on="host", crop_size=56, **kwargs):
    """Returns the ``tf.data`` stream of ``split`` as the trainer reads it.

    Args:
        info: A :class:`contracts.dataset.DatasetInfo`.
        split: ``train``, ``valid``, ``test`` or ``unlabeled``.
        training: Shuffle and augment (only for ``train``).
        policy: Augmentation policy (:data:`contracts.policy.POLICIES`).
        augment_on: ``host`` augments here; ``device`` yields un-augmented training images.
        crop_size: Crop side of the ``crop`` policy.
        **kwargs: Passed to :func:`contracts.dataset.make_dataset` (batch size, seed, cache, and
            for a resumed training stream ``steps_per_epoch``, ``initial_epoch``, ``initial_step``).
    """
    augmenter = None
    if training and augment_on == "host" and policy != "none":
        augmenter = augment.Augmenter(policy, info.image_size, crop_size)
    return dataset.make_dataset(
        info, split, training=training, policy=policy, augment=augmenter, crop_size=crop_size, **kwargs
    )
