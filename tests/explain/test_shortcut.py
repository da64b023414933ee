"""explain.shortcut: the shortcut alarm's rule as pure functions of probe histories, and ShortcutWatch.

The issue's case (8 classes, default flags, 12 epochs): probes after epochs 5
and 10 only, validation accuracy saturated at 0.99, pointing game 0.016
against a centre baseline of 0.28; the rule before this one needed three
probes of rising accuracy and stayed silent.
"""

import json

import pytest

from explain import shortcut

EIGHT_CLASSES = 1 / 8
LINE = "the pointing game cannot tell the model from its baselines: ..."


def _history(*probes):
    """Entries from ``(epoch, val_accuracy, pointing_game, center_baseline)`` tuples."""
    return [shortcut.entry(*probe) for probe in probes]


# The issue's run: --explain-every 5 probes after epochs 4 and 9 (0-based); the kept weights are the last.
ISSUE_PROBES = _history((4, 0.99, 0.016, 0.28), (9, 0.99, 0.016, 0.28))
ISSUE_FINAL = shortcut.entry(11, 0.99, 0.016, 0.28)
# Its clean twin: as accurate, the pointing game well above the centre baseline.
CLEAN_PROBES = _history((4, 0.95, 0.84, 0.28), (9, 0.99, 0.84, 0.28))
CLEAN_FINAL = shortcut.entry(11, 0.99, 0.84, 0.28)


def test_high_accuracy_is_halfway_from_chance_to_one():
    assert shortcut.high_accuracy(0.5625, EIGHT_CLASSES)
    assert not shortcut.high_accuracy(0.56, EIGHT_CLASSES)
    assert shortcut.high_accuracy(0.67, 1 / 3) and not shortcut.high_accuracy(0.66, 1 / 3)
    assert not shortcut.high_accuracy(None, EIGHT_CLASSES)


@pytest.mark.parametrize(
    ("pointing_game", "center_baseline", "below"),
    [
        (0.016, 0.28, True),  # the issue's shortcut
        (0.84, 0.28, False),  # its clean twin
        (0.36, 0.50, False),  # a clean run after its first epoch: below, but not clearly
        (0.34, 0.50, True),  # more than 0.15 short of the baseline
        (0.74, 0.90, True),  # a high baseline: more than 0.15 short
        (0.80, 0.90, False),
        (0.04, 0.10, True),  # a low baseline: under half of it
        (0.06, 0.10, False),
        (0.0, 0.0, False),  # nothing to fall below
        (None, 0.28, False),
        (0.01, None, False),
    ],
)
def test_clearly_below_the_centre_baseline(pointing_game, center_baseline, below):
    assert shortcut.clearly_below(pointing_game, center_baseline) is below


def test_issue_case_two_saturated_probes_raise_the_alarm():
    # The default streak of 2: the second probe raises it, no rising accuracy needed.
    assert shortcut.judge(ISSUE_PROBES, chance=EIGHT_CLASSES) == (ISSUE_PROBES[1], shortcut.PROBES)
    # The old default streak of 3 is out of reach of 2 probes: the final check raises it.
    assert shortcut.judge(ISSUE_PROBES, ISSUE_FINAL, chance=EIGHT_CLASSES, streak=3) == (
        ISSUE_FINAL,
        shortcut.FINAL_CHECK,
    )
    assert shortcut.judge(ISSUE_PROBES, chance=EIGHT_CLASSES, streak=3) == (None, None)


def test_a_short_run_with_one_probe_is_judged_by_the_final_check():
    # 6 epochs at --explain-every 5: one probe (before the shortcut was learned), then the kept weights.
    probes = _history((4, 0.40, 0.10, 0.28))
    final = shortcut.entry(5, 0.99, 0.016, 0.28)
    assert shortcut.judge(probes, final, chance=EIGHT_CLASSES) == (final, shortcut.FINAL_CHECK)
    # No probe at all (--explain-every beyond the epochs): the final check alone.
    assert shortcut.judge([], final, chance=EIGHT_CLASSES) == (final, shortcut.FINAL_CHECK)


def test_clean_history_raises_no_alarm():
    assert shortcut.judge(CLEAN_PROBES, CLEAN_FINAL, chance=EIGHT_CLASSES) == (None, None)
    # Early in training a clean model points anywhere, but its accuracy is not high yet.
    early = _history((0, 0.30, 0.02, 0.28), (1, 0.45, 0.05, 0.28), (2, 0.9, 0.80, 0.28))
    assert shortcut.judge(early, CLEAN_FINAL, chance=EIGHT_CLASSES, streak=1) == (None, None)


def test_a_model_that_learned_nothing_raises_no_alarm():
    # Its attention is off the objects, but so is everything else: accuracy at chance.
    probes = _history((4, 0.13, 0.0, 0.28), (9, 0.14, 0.0, 0.28))
    final = shortcut.entry(11, 0.14, 0.0, 0.28)
    assert shortcut.judge(probes, final, chance=EIGHT_CLASSES) == (None, None)


def test_uninformative_boxes_never_raise_the_alarm():
    # Whole-image boxes: any numbers, even ones that would be clearly below, say nothing.
    probes = [{**probe, "uninformative": LINE} for probe in ISSUE_PROBES]
    final = {**ISSUE_FINAL, "uninformative": LINE}
    assert shortcut.judge(probes, final, chance=EIGHT_CLASSES) == (None, None)


def test_a_skipped_pointing_game_never_raises_the_alarm():
    # No boxes: the probes have no pointing game (the callback records none, and no final check).
    probes = _history((4, 0.99, None, None), (9, 0.99, None, None))
    assert shortcut.judge(probes, shortcut.entry(11, 0.99, None, None), chance=EIGHT_CLASSES) == (None, None)


def test_the_streak_needs_consecutive_probes():
    off, on = (0.99, 0.016, 0.28), (0.99, 0.84, 0.28)
    probes = _history((0, *off), (1, *on), (2, *off), (3, None, 0.016, 0.28), (4, *off), (5, *off))
    # Broken at epoch 1 (on the objects) and at epoch 3 (no validation accuracy): epochs 4 and 5.
    assert shortcut.streak_end(probes, chance=EIGHT_CLASSES, streak=2) == 5
    assert shortcut.streak_end(probes, chance=EIGHT_CLASSES, streak=3) is None
    assert shortcut.streak_end(probes, chance=EIGHT_CLASSES, streak=1) == 0
    # The streak's alarm comes first, whatever the final check says.
    assert shortcut.judge(probes, CLEAN_FINAL, chance=EIGHT_CLASSES) == (probes[5], shortcut.PROBES)


def test_watch_raises_the_issue_alarm_at_the_second_probe_once():
    watch = shortcut.ShortcutWatch(chance=EIGHT_CLASSES)
    assert watch.probes == shortcut.DEFAULT_STREAK == 2
    assert [watch.add(4, 0.99, 0.016, 0.28, 0.05), watch.add(9, 0.99, 0.016, 0.28, 0.04)] == [False, True]
    assert watch.finish(11, 0.99, 0.016, 0.28) is False  # raised once
    summary = watch.summary()
    assert summary == {
        "shortcut_alarm": True,
        "raised_by": "probes",
        "epoch": 9,
        "probes": 2,
        "streak": 2,
        "val_accuracy": 0.99,
        "pointing_game": 0.016,
        "center_baseline": 0.28,
        "energy_in_box": 0.04,
        "final_check": shortcut.entry(11, 0.99, 0.016, 0.28),
        "pointing_game_skipped": None,
        "pointing_game_uninformative": None,
    }
    assert json.loads(json.dumps(summary)) == summary  # plain values for metrics.json
    assert watch.message() == (
        "shortcut alarm at epoch 9: at 2 Grad-CAM probes in a row the validation accuracy was high "
        "(now 0.990) while the pointing game was clearly below its centre baseline (0.016 against 0.280): "
        "the model may have learned something other than the objects (a watermark, the background); "
        "look at the gradcam/probe panels"
    )


def test_watch_final_check_raises_what_the_probes_could_not():
    watch = shortcut.ShortcutWatch(probes=3, chance=EIGHT_CLASSES)
    assert not watch.add(4, 0.99, 0.016, 0.28) and not watch.add(9, 0.99, 0.016, 0.28)
    assert watch.summary()["shortcut_alarm"] is False
    assert watch.finish(11, 0.99, 0.016, 0.28, 0.05) is True
    summary = watch.summary()
    assert (summary["shortcut_alarm"], summary["raised_by"], summary["epoch"]) == (True, "final_check", 11)
    assert summary["probes"] == 2 and summary["final_check"]["energy_in_box"] == 0.05
    assert watch.message().startswith(
        "shortcut alarm at epoch 11: the kept weights' validation accuracy is high (0.990) while the "
        "pointing game was clearly below its centre baseline (0.016 against 0.280): "
    )


def test_watch_final_summary_runs_the_final_probe_once():
    calls = []
    watch = shortcut.ShortcutWatch(chance=EIGHT_CLASSES)
    watch.final_probe = lambda accuracy: calls.append(accuracy) or watch.finish(5, accuracy, 0.84, 0.28)
    summary = watch.final_summary(0.97)
    assert calls == [0.97] and summary["shortcut_alarm"] is False
    # No alarm: the scores shown are the kept weights'.
    assert (summary["val_accuracy"], summary["pointing_game"], summary["final_check"]["epoch"]) == (
        0.97,
        0.84,
        5,
    )
    assert watch.final_summary(0.5)["val_accuracy"] == 0.97 and calls == [0.97]
    # Without a probe (no Grad-CAM callback): the summary of what was seen, no final check.
    bare = shortcut.ShortcutWatch()
    assert bare.final_summary(0.9)["final_check"] is None and bare.summary()["probes"] == 0


def test_non_finite_accuracy_is_no_accuracy():
    # An empty valid split evaluates to NaN: not "high", and null in metrics.json.
    assert shortcut.entry(3, float("nan"), 0.0, 0.28)["val_accuracy"] is None
    watch = shortcut.ShortcutWatch(chance=EIGHT_CLASSES)
    assert watch.finish(3, float("nan"), 0.0, 0.28) is False


def test_watch_state_survives_a_restart():
    watch = shortcut.ShortcutWatch(chance=EIGHT_CLASSES)
    watch.add(4, 0.99, 0.016, 0.28)
    state = json.loads(json.dumps(watch.get_state()))  # as a backup's state.json holds it
    resumed = shortcut.ShortcutWatch(chance=EIGHT_CLASSES)
    resumed.load_state(state)
    assert resumed.add(9, 0.99, 0.016, 0.28) is True
    again = shortcut.ShortcutWatch(chance=EIGHT_CLASSES)
    again.load_state(json.loads(json.dumps(resumed.get_state())))
    assert (again.alarm["epoch"], again.raised_by) == (9, "probes")
    # A backup from before the final check existed (no "raised_by"): its alarm was the probes'.
    old = {"history": state["history"], "alarm": dict(state["history"][0])}
    again.load_state(old)
    assert again.raised_by == "probes"
    with pytest.raises(ValueError, match="probes must be >= 1, got 0"):
        shortcut.ShortcutWatch(probes=0)
