"""Public strategy names: the words logs and metrics.json show are those of ``--strategy`` and deploy/."""

import pytest
import tensorflow as tf

from tests.trainer import helpers
from trainer import distribute


@pytest.mark.parametrize(
    ("strategy_class", "expected"),
    [
        (tf.distribute.MultiWorkerMirroredStrategy, "multi_worker"),
        (tf.distribute.MirroredStrategy, "mirrored"),
        (tf.distribute.OneDeviceStrategy, "one_device"),
        (type(tf.distribute.get_strategy()), "default"),
    ],
)
def test_public_name_of_each_strategy_class(strategy_class, expected):
    assert distribute.public_name(strategy_class.__name__) == expected


def test_public_names_are_the_strategy_flag_words():
    # deploy/ writes --strategy mirrored / multi_worker: the names read back must be the same words.
    from trainer import config

    assert set(distribute.STRATEGY_NAMES.values()) <= {*config.STRATEGIES, "default"}
    assert distribute.public_name("TPUStrategy") is None


def test_default_strategy_is_named_default():
    strategy = tf.distribute.get_strategy()
    assert type(strategy).__name__.startswith("_")  # the private class the log used to show
    assert distribute.strategy_name(strategy) == "default"
    assert distribute.strategy_name(distribute.make_strategy("auto")) == "default"


def test_single_device_strategies_in_process():
    assert distribute.strategy_name(tf.distribute.OneDeviceStrategy("/cpu:0")) == "one_device"
    assert distribute.strategy_name(tf.distribute.MirroredStrategy(["/cpu:0"])) == "mirrored"


def test_subclass_keeps_its_family_name():
    class Custom(tf.distribute.MirroredStrategy):
        pass

    assert distribute.strategy_name(Custom(["/cpu:0"])) == "mirrored"


def test_mirrored_over_two_logical_cpus_is_named_mirrored():
    # Logical devices must be configured before TensorFlow initializes: a fresh interpreter.
    proc = helpers.run_script(
        """
        from trainer import distribute

        distribute.configure_devices(2)
        strategy = distribute.make_strategy("auto", num_cpu_devices=2)
        print(distribute.strategy_name(strategy), strategy.num_replicas_in_sync)
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["mirrored", "2"]
