"""One shard of train/ images converted in-process by the Beam job's own DoFn (no pipeline)."""

import json

from preprocessing import sources, transforms


def convert_shard(tmp_path, names):
    """Converts ``tmp_path/raw/train/n1/images/<name>`` for each name into one shard under ``tmp_path/out``.

    Returns:
        ``(rejected, summary)``: the dead letters as dicts (``path``, ``reason``) and the shard's
        :class:`transforms.ShardSummary`.
    """
    items = [sources.Item(f"train/n1/images/{name}", "train", 0, None) for name in names]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(sources.items_to_text(items))
    fn = transforms.ConvertShardFn(str(tmp_path / "raw"), str(tmp_path / "out"), [("n1", "one")], 64)
    fn.setup()
    outputs = list(fn.process(transforms.ShardTask("train", 0, 1, str(manifest))))
    return [json.loads(output.value) for output in outputs[:-1]], outputs[-1]
