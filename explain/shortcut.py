"""The shortcut alarm: a model that is accurate while Grad-CAM's attention is clearly off the objects.

The rule (docs/explain.md, "The shortcut alarm") is written once, as pure
functions of plain probe entries: :func:`high_accuracy`, :func:`clearly_below`,
:func:`shortcut_like` (one probe) and :func:`judge` (the probes during training
and the final check of the kept weights). :class:`ShortcutWatch` keeps a run's
entries: :class:`explain.callback.GradCamCallback` feeds it a probe's scores
with the epoch's validation accuracy, and at the end the trainer asks for
:meth:`ShortcutWatch.final_summary`, which probes the kept weights once and is
the ``explanations`` entry of ``metrics.json``. A pointing game that was not
played (no boxes) or cannot tell the model from its baselines (boxes covering
the whole image) never raises the alarm.
"""

import dataclasses
import math
from collections.abc import Callable

# "High" validation accuracy: at least this share of the way from chance (1 / classes) to 1:
# 0.5625 for 8 classes, 0.667 for 3. A model that has learned nothing points anywhere; the alarm
# is about a model that learned something, and not the objects.
HIGH_ACCURACY = 0.5
# "Clearly below" the centre baseline: short of it by this much, or by half the baseline when
# that is less (a baseline under 0.3). One probe's pointing game on 64 images has a standard
# error of up to 0.06; a clean run early in training was seen at 0.36 against 0.50.
BELOW_MARGIN = 0.15
BELOW_FRACTION = 0.5
# Consecutive shortcut-like probes that raise the alarm during training (the trainer's default
# --shortcut-probes): the final check needs no streak, so a short run is judged too.
DEFAULT_STREAK = 2
PROBES, FINAL_CHECK = "probes", "final_check"


def high_accuracy(accuracy, chance):
    """Whether ``accuracy`` is at least :data:`HIGH_ACCURACY` of the way from ``chance`` to 1."""
    return accuracy is not None and accuracy >= chance + HIGH_ACCURACY * (1.0 - chance)


def clearly_below(pointing_game, center_baseline):
    """Whether a pointing game is clearly below its centre baseline (see :data:`BELOW_MARGIN`)."""
    if pointing_game is None or center_baseline is None or center_baseline <= 0:
        return False  # Nothing to fall below: a baseline that never hits.
    return pointing_game <= center_baseline - min(BELOW_MARGIN, BELOW_FRACTION * center_baseline)


def shortcut_like(entry, chance):
    """Whether one probe entry looks like a shortcut: high accuracy, attention clearly off the objects.

    A probe whose pointing game is uninformative (whole-image boxes: every
    peak hits, the baseline's too) or was not played never does.
    """
    if entry.get("uninformative"):
        return False
    return high_accuracy(entry["val_accuracy"], chance) and clearly_below(
        entry["pointing_game"], entry["center_baseline"]
    )


def streak_end(history, *, chance, streak):
    """Index of the first probe ending ``streak`` consecutive :func:`shortcut_like` probes, else ``None``."""
    run = 0
    for index, probe in enumerate(history):
        run = run + 1 if shortcut_like(probe, chance) else 0
        if run >= streak:
            return index
    return None


def judge(history, final=None, *, chance, streak=DEFAULT_STREAK):
    """The alarm's verdict on a run: ``(entry, raised_by)``, or ``(None, None)`` without an alarm.

    The probes during training raise it at the first probe that ends ``streak``
    consecutive shortcut-like probes (``raised_by`` :data:`PROBES`); otherwise
    the final check of the kept weights raises it when that one probe is
    shortcut-like (:data:`FINAL_CHECK`). Either suffices: the streak warns
    while a long run trains, the final check judges the weights the run keeps
    however few probes it had.

    Args:
        history: Probe entries in order (dicts with ``val_accuracy``,
            ``pointing_game``, ``center_baseline`` and optionally ``uninformative``).
        final: The final check's entry, or ``None`` when there was none.
        chance: ``1 / classes``.
        streak: Consecutive shortcut-like probes that raise the alarm.
    """
    index = streak_end(history, chance=chance, streak=streak)
    if index is not None:
        return history[index], PROBES
    if final is not None and shortcut_like(final, chance):
        return final, FINAL_CHECK
    return None, None


def entry(epoch, val_accuracy, pointing_game, center_baseline, energy_in_box=None, uninformative=None):
    """One probe as the watch keeps it: plain, JSON-ready values (a non-finite number is ``None``)."""
    return {
        "epoch": None if epoch is None else int(epoch),
        "val_accuracy": _number(val_accuracy),
        "pointing_game": _number(pointing_game),
        "center_baseline": _number(center_baseline),
        "energy_in_box": _number(energy_in_box),
        "uninformative": uninformative,
    }


@dataclasses.dataclass
class ShortcutWatch:
    """Keeps a run's probes and its final check, and raises the shortcut alarm by :func:`judge`.

    The alarm is raised once: by the probes while training (:meth:`add`), or
    else by the final check (:meth:`finish`).

    Args:
        probes: Consecutive shortcut-like probes (``K``) that raise the alarm while training.
        chance: ``1 / classes``, the bottom of the scale of "high accuracy".
        skipped: Why the probes play no pointing game (no boxes), set by the
            callback; reported by :meth:`summary`.
        final_probe: Set by the callback: called with the kept weights'
            validation accuracy, it probes the current weights once and calls
            :meth:`finish` (``None``: nothing to probe, :meth:`final_summary`
            only summarises).
    """

    probes: int = DEFAULT_STREAK
    chance: float = 0.0
    history: list = dataclasses.field(default_factory=list)
    alarm: dict | None = None
    raised_by: str | None = None
    final: dict | None = None
    skipped: str | None = None
    final_probe: Callable | None = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.probes < 1:
            raise ValueError(f"probes must be >= 1, got {self.probes}")

    def add(
        self, epoch, val_accuracy, pointing_game, center_baseline, energy_in_box=None, uninformative=None
    ):
        """Records one probe (``epoch`` 0-based); returns whether this probe raised the alarm.

        ``uninformative`` is the probe's :func:`explain.pointing.uninformative_line` (``None``
        when its pointing game can tell the model from its baselines).
        """
        self.history.append(
            entry(epoch, val_accuracy, pointing_game, center_baseline, energy_in_box, uninformative)
        )
        return self._judge()

    def finish(
        self, epoch, val_accuracy, pointing_game, center_baseline, energy_in_box=None, uninformative=None
    ):
        """Records the final check of the kept weights; returns whether it raised the alarm.

        ``epoch`` is the last epoch trained (0-based), ``val_accuracy`` the kept
        weights' validation accuracy. A second final check is ignored.
        """
        if self.final is not None:
            return False
        self.final = entry(epoch, val_accuracy, pointing_game, center_baseline, energy_in_box, uninformative)
        return self._judge()

    def _judge(self):
        if self.alarm is not None:
            return False
        found, raised_by = judge(self.history, self.final, chance=self.chance, streak=self.probes)
        if found is None:
            return False
        self.alarm, self.raised_by = found, raised_by
        return True

    def final_summary(self, val_accuracy):
        """Runs the final check on the current (kept) weights once, then returns :meth:`summary`.

        Args:
            val_accuracy: The kept weights' validation accuracy (the trainer's final evaluation).
        """
        if self.final_probe is not None and self.final is None:
            self.final_probe(val_accuracy)
        return self.summary()

    def message(self):
        """The one-line warning of a raised alarm (``None`` without one)."""
        if self.alarm is None:
            return None
        found = self.alarm
        accuracy = f"{found['val_accuracy']:.3f}"
        if self.raised_by == PROBES:
            what = (
                f"at {self.probes} Grad-CAM probes in a row the validation accuracy was high (now {accuracy})"
            )
        else:
            what = f"the kept weights' validation accuracy is high ({accuracy})"
        return (
            f"shortcut alarm at epoch {found['epoch']}: {what} while the pointing game was clearly below "
            f"its centre baseline ({found['pointing_game']:.3f} against {found['center_baseline']:.3f}): "
            "the model may have learned something other than the objects (a watermark, the background); "
            "look at the gradcam/probe panels"
        )

    def summary(self):
        """The ``explanations`` entry of ``metrics.json``: plain values only.

        Keys: ``shortcut_alarm`` (bool), ``raised_by`` (``"probes"``,
        ``"final_check"`` or ``None``), ``epoch`` (0-based epoch of the alarm,
        else ``None``), ``probes`` (how many probes were scored during
        training; 0: the run was not watched), ``streak`` (``K``),
        ``val_accuracy``, ``pointing_game``, ``center_baseline`` and
        ``energy_in_box`` of the alarm's entry (else of the final check, else
        of the last probe; ``None`` without one), ``final_check`` (the kept
        weights' entry: ``epoch``, the four scores and ``uninformative``;
        ``None`` when there was none), ``pointing_game_skipped``: why no probe
        played the pointing game (``None`` when they did) and
        ``pointing_game_uninformative``: the shown entry's line saying the game
        cannot tell the model from its baselines (``None`` when it can).
        """
        shown = self.alarm or self.final or (self.history[-1] if self.history else {})
        scores = ("val_accuracy", "pointing_game", "center_baseline", "energy_in_box")
        return {
            "shortcut_alarm": self.alarm is not None,
            "raised_by": self.raised_by,
            "epoch": self.alarm["epoch"] if self.alarm else None,
            "probes": len(self.history),
            "streak": self.probes,
            **{key: shown.get(key) for key in scores},
            "final_check": None if self.final is None else dict(self.final),
            "pointing_game_skipped": self.skipped,
            "pointing_game_uninformative": shown.get("uninformative"),
        }

    def get_state(self):
        """Returns the probes seen and the alarm as JSON-ready values (a backup keeps them)."""
        alarm = None if self.alarm is None else dict(self.alarm)
        return {
            "history": [dict(probe) for probe in self.history],
            "alarm": alarm,
            "raised_by": self.raised_by,
        }

    def load_state(self, state):
        """Puts back what :meth:`get_state` returned."""
        self.history = [dict(probe) for probe in state["history"]]
        self.alarm = None if state["alarm"] is None else dict(state["alarm"])
        # A backup written before the final check existed: its alarm came from the probes.
        self.raised_by = state.get("raised_by", PROBES if self.alarm else None)


def _number(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
