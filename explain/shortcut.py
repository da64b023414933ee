"""The shortcut alarm: validation accuracy that keeps rising while Grad-CAM's attention is off the objects.

:class:`ShortcutWatch` reads each Grad-CAM probe's pointing game (with its
centre baseline) and the epoch's validation accuracy; the probes come from
:class:`explain.callback.GradCamCallback`, and :meth:`ShortcutWatch.summary`
is the ``explanations`` entry of the trainer's ``metrics.json``. A pointing
game that was not played (no boxes) or cannot tell the model from its
baselines (boxes covering the whole image) never raises the alarm.
"""

import dataclasses


@dataclasses.dataclass
class ShortcutWatch:
    """Raises the shortcut alarm from the probes' validation accuracy and pointing game.

    The alarm is raised at the first probe that ends ``probes`` (``K``)
    consecutive probes where (a) the pointing game is at or below its centre
    baseline and (b) the validation accuracy keeps rising: it is higher at
    every one of the ``K`` probes than at the probe just before them (than
    chance, ``chance``, when there is none). A model that keeps learning while
    its attention stays off the objects is learning something else: a
    watermark, the background. Comparing with the probe before the streak,
    not probe to probe, lets a streak survive the jitter of a small
    validation split. A probe without a validation accuracy or a pointing
    game, or whose pointing game is uninformative (boxes covering the whole
    image: "at or below the baseline" then says nothing), breaks the streak
    (and, as the probe before one, prevents it). The alarm is raised once.

    Args:
        probes: Length ``K`` of the streak.
        chance: The accuracy the first probe is compared with (``1 / classes``).
        skipped: Why the probes play no pointing game (no boxes), set by the
            callback; reported by :meth:`summary`.
    """

    probes: int = 3
    chance: float = 0.0
    history: list = dataclasses.field(default_factory=list)
    alarm: dict | None = None
    skipped: str | None = None

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
        entry = {
            "epoch": int(epoch),
            "val_accuracy": _number(val_accuracy),
            "pointing_game": _number(pointing_game),
            "center_baseline": _number(center_baseline),
            "energy_in_box": _number(energy_in_box),
            "uninformative": uninformative,
        }
        self.history.append(entry)
        if self.alarm is not None or not self._streak():
            return False
        self.alarm = entry
        return True

    def _streak(self):
        if len(self.history) < self.probes:
            return False
        earlier = self.history[: -self.probes]
        before = earlier[-1]["val_accuracy"] if earlier else self.chance
        window = self.history[-self.probes :]
        return before is not None and all(
            entry["val_accuracy"] is not None
            and entry["val_accuracy"] > before
            and _points_at_object(entry) is False
            for entry in window
        )

    def message(self):
        """The one-line warning of a raised alarm (``None`` without one)."""
        if self.alarm is None:
            return None
        entry = self.alarm
        return (
            f"shortcut alarm at epoch {entry['epoch']}: over {self.probes} Grad-CAM probes the validation "
            f"accuracy rose (to {entry['val_accuracy']:.3f}) while the pointing game stayed at or below its "
            f"centre baseline (now {entry['pointing_game']:.3f} against {entry['center_baseline']:.3f}): "
            "the model may have learned something other than the objects (a watermark, the background); "
            "look at the gradcam/probe panels"
        )

    def summary(self):
        """The ``explanations`` entry of ``metrics.json``: plain values only.

        Keys: ``shortcut_alarm`` (bool), ``epoch`` (0-based epoch of the
        alarm, else ``None``), ``probes`` (how many probes were scored; 0: the
        run was not watched), ``streak`` (``K``), and ``val_accuracy``,
        ``pointing_game``, ``center_baseline``, ``energy_in_box`` of the
        alarm's probe (else of the last probe; ``None`` without one);
        ``pointing_game_skipped``: why no probe played the pointing game
        (``None`` when they did) and ``pointing_game_uninformative``: that
        probe's line saying the game cannot tell the model from its
        baselines (``None`` when it can).
        """
        entry = self.alarm or (self.history[-1] if self.history else {})
        scores = ("val_accuracy", "pointing_game", "center_baseline", "energy_in_box")
        return {
            "shortcut_alarm": self.alarm is not None,
            "epoch": self.alarm["epoch"] if self.alarm else None,
            "probes": len(self.history),
            "streak": self.probes,
            **{key: entry.get(key) for key in scores},
            "pointing_game_skipped": self.skipped,
            "pointing_game_uninformative": entry.get("uninformative"),
        }

    def get_state(self):
        """Returns the probes seen and the alarm as JSON-ready values (a backup keeps them)."""
        return {"history": [dict(entry) for entry in self.history], "alarm": self.alarm}

    def load_state(self, state):
        """Puts back what :meth:`get_state` returned."""
        self.history = [dict(entry) for entry in state["history"]]
        self.alarm = None if state["alarm"] is None else dict(state["alarm"])


def _points_at_object(entry):
    """Whether a probe's pointing game beats its centre baseline (``None``: not scored, or uninformative)."""
    if entry["pointing_game"] is None or entry["center_baseline"] is None or entry.get("uninformative"):
        return None
    return entry["pointing_game"] > entry["center_baseline"]


def _number(value):
    return None if value is None else float(value)
