"""Shared contracts at the bottom of the import graph (docs/design.md, "Layers").

* :mod:`contracts.schema`: the TFRecord feature keys and ``metadata.json``;
* :mod:`contracts.dataset` and :mod:`contracts.staging`: reading a dataset the
  preprocessing job wrote (local or ``gs://``) into ``tf.data`` batches;
* :mod:`contracts.policy`: the augmentation policies' evaluation transform,
  which every evaluation, serving and explanation input goes through;
* :mod:`contracts.model`: what a saved model carries (its main output name and
  the custom layers it needs to reload);
* :mod:`contracts.jobdir`: every file name of a job dir and the one reader of it;
* :mod:`contracts.storage`: the one layer for ``gs://`` reads and writes;
* :mod:`contracts.images`: decoded images to 8-bit RGB (the job's re-encoding
  and ``trainer.predict`` convert alike) and the pixel cap of every decoder.

Nothing here imports ``preprocessing``, ``trainer``, ``explain`` or ``deploy``.
"""
