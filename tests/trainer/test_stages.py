"""The run's last line: seconds per stage (trainer/stages.py), as the CLI prints and benchmarks read it."""

import pytest

from contracts import voice
from trainer import stages


def test_laps_add_up_and_the_summary_parses_back(monkeypatch):
    now = iter([10.0, 12.5, 13.0, 14.0, 20.0])
    monkeypatch.setattr(stages.time, "monotonic", lambda: next(now))
    clock = stages.StageClock()
    clock.lap("import")  # 2.5 s
    clock.lap("build")  # 0.5 s
    clock.lap("import")  # 1.0 s more: a stage lapped twice adds up
    clock.lap("steps")  # 6.0 s
    assert clock.seconds == {"import": 3.5, "build": 0.5, "steps": 6.0}
    assert clock.has("build") and not clock.has("export")
    assert clock.summary() == "seconds per stage: import 3.5, build 0.5, steps 6.0; total 10.0"
    assert stages.parse(f"12:00:00 trainer: {clock.summary()}") == {
        "import": 3.5,
        "build": 0.5,
        "steps": 6.0,
        "total": 10.0,
    }
    assert stages.parse("12:00:00 trainer: done: valid accuracy 0.5") is None


def test_a_run_ends_with_its_stages_in_order(plateau_job):
    """The shared plateau run (no export): every stage it went through, in order, summing to its total."""
    lines = [
        match.group(3)
        for match in map(voice.LINE_PATTERN.fullmatch, plateau_job["stderr"].splitlines())
        if match and match.group(2) == "trainer"
    ]
    assert lines[-2].startswith("done: ")
    seconds = stages.parse(lines[-1])
    assert seconds is not None, lines[-1]
    total = seconds.pop("total")
    assert list(seconds) == list(stages.STAGES)
    assert all(value >= 0 for value in seconds.values())
    assert sum(seconds.values()) == pytest.approx(total, abs=0.1 * len(seconds))
