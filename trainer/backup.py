"""Generations of a backup folder: written next to each other, committed atomically, verified on read.

A backup folder (``backup/`` and every ``checkpoints/plateau-epoch-EEEE/``) holds::

    gen-000007/                  the newest complete generation
        ckpt.index, ckpt.data-00000-of-00001   tf.train.Checkpoint of model and optimizer
        early_stopping-best-epoch-0003.npz     arrays a callback keeps (best weights)
        state.json               epoch, step, learning rate, callback states, file names
                                 and the sha256 of every other file of the generation
    gen-000006/                  the previous generation, kept as a fallback

A generation is written into a new folder; its ``state.json`` is written last
(to a temporary name, then renamed), so a generation without one is
incomplete and never used. Older generations are deleted only after the new
one is committed, the previous one stays. Reading verifies every checksum
and names what is damaged, so a resumed run falls back to the previous
generation (or starts over) instead of failing on a truncated file, a lost
upload or flipped bits.
"""

import dataclasses
import json
import os
import re
import shutil

from contracts import jobdir, storage

STATE_FILE = "state.json"
CHECKPOINT = "ckpt"
_PREFIX = "gen-"
_NAME = re.compile(r"^gen-(\d{6,})$")
# The keys of a generation's state.json that the trainer reads, and their types.
_FIELDS = {
    "epoch": int,
    "step_in_epoch": int,
    "learning_rate": int | float,
    "checkpoint": str,
    "callbacks": dict,
    "arrays": dict,
    "files": dict,
}


@dataclasses.dataclass
class Generation:
    """One generation folder of a backup folder.

    Attributes:
        directory: The backup folder.
        name: Folder name, ``gen-NNNNNN``.
        state: The parsed ``state.json`` (``None`` when it cannot be used).
        problem: Why the generation cannot be used, or ``None``.
    """

    directory: str
    name: str
    state: dict | None = None
    problem: str | None = None

    @property
    def path(self):
        """The generation's folder."""
        return os.path.join(self.directory, self.name)

    def file(self, name):
        """Path of one of the generation's files."""
        return os.path.join(self.path, name)


@dataclasses.dataclass
class Scan:
    """What a backup folder holds, newest generation first.

    Attributes:
        directory: The backup folder.
        generations: Every generation, newest first; ``usable`` ones passed every check.
    """

    directory: str
    generations: list

    @property
    def usable(self):
        """Generations whose state parses and whose files all match their checksums."""
        return [generation for generation in self.generations if generation.problem is None]


def names(directory):
    """Returns the generation folder names of ``directory``, newest (highest number) first."""
    if not os.path.isdir(directory):
        return []
    found = [entry for entry in os.listdir(directory) if _NAME.match(entry)]
    return sorted(found, key=lambda name: int(_NAME.match(name).group(1)), reverse=True)


def next_name(directory):
    """Returns the folder name of the next generation (one more than any present, even incomplete)."""
    existing = names(directory)
    number = int(_NAME.match(existing[0]).group(1)) + 1 if existing else 1
    return f"{_PREFIX}{number:06d}"


def commit(generation, state):
    """Completes a generation: records every file's checksum in ``state.json``, written last.

    Args:
        generation: The :class:`Generation` whose files are written.
        state: JSON-serializable state; ``files`` and ``generation`` are added.

    Returns:
        The state written.
    """
    files = sorted(name for name in os.listdir(generation.path) if not name.startswith(STATE_FILE))
    state = {**state, "generation": generation.name}
    state["files"] = {name: storage.file_sha256(generation.file(name)) for name in files}
    temporary = generation.file(STATE_FILE + ".tmp")
    with open(temporary, "w") as f:
        f.write(jobdir.to_json(state, indent=2))
        f.flush()
        # Durable before the rename makes it the newest generation.
        os.fsync(f.fileno())
    os.replace(temporary, generation.file(STATE_FILE))
    # A gs:// mirror uploads files in the order they were written (their mtime),
    # so the state file must be the newest; a coarse file-system clock can give
    # it the mtime of the files it vouches for.
    written = max((os.stat(generation.file(name)).st_mtime_ns for name in files), default=0)
    stat = os.stat(generation.file(STATE_FILE))
    if stat.st_mtime_ns <= written:
        os.utime(generation.file(STATE_FILE), ns=(stat.st_atime_ns, written + 1))
    return state


def prune(directory, keep):
    """Deletes every generation of ``directory`` not named in ``keep``.

    The state file goes first: a deletion cut short leaves an incomplete
    generation, which is ignored, never a generation with missing files.
    """
    for name in names(directory):
        if name in keep:
            continue
        path = os.path.join(directory, name)
        state = os.path.join(path, STATE_FILE)
        if os.path.exists(state):
            os.remove(state)
        shutil.rmtree(path, ignore_errors=True)


def read(directory, name):
    """Returns the :class:`Generation` ``name`` with its parsed state, or the reason it has none."""
    generation = Generation(directory, name)
    try:
        with open(generation.file(STATE_FILE)) as f:
            text = f.read()
    except FileNotFoundError:
        generation.problem = f"{name}: incomplete (no {STATE_FILE})"
        return generation
    except OSError as error:
        generation.problem = f"{name}/{STATE_FILE}: unreadable ({error.strerror or error})"
        return generation
    try:
        state = json.loads(text)
    except ValueError as error:
        generation.problem = f"{name}/{STATE_FILE}: {_json_problem(text, error)}"
        return generation
    if not isinstance(state, dict):
        generation.problem = f"{name}/{STATE_FILE}: not a JSON object"
        return generation
    # A hand-edited or foreign file must fail here, not as a TypeError in the trainer.
    wrong = [key for key, kind in _FIELDS.items() if not isinstance(state.get(key), kind)]
    wrong += [key for key in ("files", "arrays") if key not in wrong and not _names(state[key])]
    if wrong:
        generation.problem = f"{name}/{STATE_FILE}: missing or invalid {', '.join(wrong)}"
        return generation
    generation.state = state
    return generation


def verify(generation):
    """Checks every file of a parsed generation against its checksum; sets and returns ``problem``."""
    state, problems = generation.state, []
    needed = [f"{state['checkpoint']}.index", *state["arrays"].values()]
    problems += [f"{name}: not in the checksum list" for name in needed if name not in state["files"]]
    for name, expected in state["files"].items():
        path = generation.file(name)
        if not os.path.exists(path):
            problems.append(f"{name}: missing")
        elif storage.file_sha256(path) != expected:
            problems.append(f"{name}: checksum mismatch")
    if problems:
        generation.problem = f"{generation.name}/" + f"; {generation.name}/".join(problems)
    return generation.problem


def scan(directory):
    """Reads and verifies every generation of a backup folder.

    Returns:
        A :class:`Scan`; its ``usable`` generations are the ones to restore, newest first.
    """
    generations = []
    for name in names(directory):
        generation = read(directory, name)
        if generation.problem is None:
            verify(generation)
        generations.append(generation)
    return Scan(directory, generations)


def newest_state(directory):
    """Returns the parsed state of the newest generation whose ``state.json`` parses, or ``None``.

    Files are not verified: this is for looking, :func:`scan` is for resuming.
    """
    for name in names(directory):
        generation = read(directory, name)
        if generation.state is not None:
            return generation.state
    return None


def describe(generations):
    """Returns one line naming the problems of ``generations`` (``; ``-separated)."""
    return "; ".join(generation.problem for generation in generations if generation.problem)


def _names(mapping):
    return all(isinstance(key, str) and isinstance(value, str) for key, value in mapping.items())


def _json_problem(text, error):
    if not text.strip():
        return "empty"
    if isinstance(error, json.JSONDecodeError) and (
        error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated")
    ):
        return "truncated JSON"
    return f"not valid JSON ({error})"
