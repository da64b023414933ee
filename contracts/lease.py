"""The job-dir lease: one training run at a time writes a job dir.

Two trainers on one job dir interleave their backups and overwrite each
other's files. So a run's chief creates ``J/trainer.lease`` (:data:`LEASE_FILE`)
before it reads or writes anything there, and deletes it when the run ends:
done, failed, diverged or stopped by SIGTERM (a preemption). A second run finds
the lease and is refused with one line naming the holder (:class:`LeaseHeldError`).

A lease whose holder is gone is taken over with one warning line. The holder
is gone when

* it ran on this host and its pid is no longer alive (or is this process's
  own pid, but with a lease token this process never made: a restarted
  container reuses pids), or
* it names the scheduler job this process belongs to (:func:`job_id`: Vertex
  AI's ``CLOUD_ML_JOB_ID``, or ``TRAINER_JOB_ID``, which the GKE manifests set
  to the Job's name): a scheduler runs one chief of a job at a time, so that
  holder is an earlier attempt of this one, restarted after a hard kill, or
* its heartbeat is older than :data:`HEARTBEAT_TIMEOUT_S`, on any host. The
  holder refreshes it every :data:`HEARTBEAT_EVERY_S` from a daemon thread,
  not at epoch ends: a tiny-imagenet epoch on a CPU lasts hours. Hosts' clocks
  must agree to well within the timeout.

So a run killed without its SIGTERM handler (SIGKILL, a crash) is resumed at
once on the same host or by its scheduler job's next attempt (a new VM after a
hard preemption), and otherwise after at most :data:`HEARTBEAT_TIMEOUT_S`.

Creating and taking over are atomic. A local lease is created with
``O_CREAT | O_EXCL`` and rewritten (heartbeat, takeover, release) under an
exclusive ``flock`` after checking that it still holds what was read. A
``gs://`` lease is created with ``if_generation_match=0`` and rewritten or
deleted with ``if_generation_match`` set to the generation read, so of two
runs that find the same dead lease only one takes it over. A FUSE mount of a
bucket (``/gcs/...``) gives neither guarantee: pass the ``gs://`` URI instead.

Only the standard library and :mod:`contracts.storage` (google-cloud-storage) here.
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket
import threading
import time
import uuid

from contracts import storage

LEASE_FILE = "trainer.lease"
HEARTBEAT_EVERY_S = 60.0
# Ten missed heartbeats: a busy host or a slow bucket never loses a live run's lease.
HEARTBEAT_TIMEOUT_S = 600.0
# Where a scheduler names the job a process runs for; the first one set is the job's id.
JOB_ID_VARIABLES = ("CLOUD_ML_JOB_ID", "TRAINER_JOB_ID")
# Tokens of the leases this process holds now: its own pid in a lease is alive only with one of these.
_HELD_TOKENS = set()


class LeaseError(ValueError):
    """The job dir's lease cannot be taken (the job dir cannot be reached)."""


class LeaseHeldError(LeaseError):
    """Another live run holds the job dir's lease."""


def _now():
    return time.time()


def _when(seconds):
    """``2026-12-07 03:10:00 UTC`` for a time in seconds since the epoch."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # Alive, owned by another user.
        return True
    return True


def parse_holder(data):
    """Returns the holder a lease's bytes name, or ``None`` when they are no lease (half-written, damaged)."""
    try:
        holder = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    fields = {"host": str, "pid": int, "token": str, "since": (int, float), "heartbeat": (int, float)}
    if not isinstance(holder, dict) or not all(isinstance(holder.get(k), t) for k, t in fields.items()):
        return None
    # Signal 0 to pid 0 or -1 reaches a whole group: no process a lease can name.
    return holder if holder["pid"] > 0 else None


def describe(holder, modified=None, now=None):
    """Who holds a lease, for a message: ``host H, pid P, since T, last heartbeat N s ago``."""
    now = _now() if now is None else now
    if holder is None:
        return f"an unreadable lease written {now - modified:.0f} s ago"
    return (
        f"host {holder['host']}, pid {holder['pid']}, since {_when(holder['since'])}, "
        f"last heartbeat {max(0.0, now - holder['heartbeat']):.0f} s ago"
    )


def job_id(environ=None):
    """Returns the id of the scheduler job this process runs for (:data:`JOB_ID_VARIABLES`), or ``""``."""
    environ = os.environ if environ is None else environ
    return next((environ[name] for name in JOB_ID_VARIABLES if environ.get(name)), "")


def is_gone(holder, modified, now=None, host=None, job=None):
    """Whether a lease's holder is gone (the module's docstring says when).

    Args:
        holder: :func:`parse_holder`'s dict, or ``None`` for an unreadable lease.
        modified: When the lease was last written (seconds since the epoch): the
            heartbeat of an unreadable lease.
        now: The time now; ``time.time()`` by default.
        host: This host's name; ``socket.gethostname()`` by default.
        job: This process's scheduler job; :func:`job_id` by default.
    """
    now = _now() if now is None else now
    host = socket.gethostname() if host is None else host
    job = job_id() if job is None else job
    if holder is None:
        return now - modified > HEARTBEAT_TIMEOUT_S
    if job and holder.get("job") == job:
        return True
    if holder["host"] == host:
        if holder["pid"] == os.getpid():
            return holder["token"] not in _HELD_TOKENS
        if not _pid_alive(holder["pid"]):
            return True
    return now - holder["heartbeat"] > HEARTBEAT_TIMEOUT_S


class _LocalFile:
    """The lease as a local file; a version is the file's bytes."""

    def __init__(self, path):
        self.path = path

    def create(self, data):
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as f, _locked(f):
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return data

    def read(self):
        """Returns ``(data, version, modified)``, or ``None`` when there is no lease."""
        try:
            with open(self.path, "rb") as f:
                return f.read(), None, os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None

    def replace(self, expected, data):
        """Writes ``data`` if the lease still holds ``expected``; returns the new version or ``None``."""
        return self._if_unchanged(expected, lambda f: _rewrite(f, data) or data)

    def delete(self, expected):
        return self._if_unchanged(expected, lambda f: os.remove(self.path) or True)

    def _if_unchanged(self, expected, action):
        try:
            with open(self.path, "r+b") as f, _locked(f):
                # Unlinked by its holder while this process waited for the lock: no longer the lease.
                if os.fstat(f.fileno()).st_nlink == 0 or f.read() != expected:
                    return None
                return action(f)
        except FileNotFoundError:
            return None


def _rewrite(f, data):
    f.seek(0)
    f.truncate()
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


@contextlib.contextmanager
def _locked(f):
    # A file system without locks (some network mounts) still gets the check-then-write.
    with contextlib.suppress(OSError):
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class _GcsObject:
    """The lease as a ``gs://`` object; a version is the object's generation."""

    def __init__(self, uri):
        bucket, name = storage.split_gcs(uri)
        self.uri = uri
        self.blob = storage.gcs_client().bucket(bucket).blob(name)

    def _conditional(self, call):
        """``call()``'s result, or ``None`` when its generation precondition failed or the object is gone."""
        from google.api_core import exceptions

        with storage.translated(self.uri):
            try:
                return call()
            except (exceptions.PreconditionFailed, exceptions.NotFound):
                return None

    def create(self, data):
        return self._conditional(lambda: self._upload(data, 0))

    def read(self):
        from google.api_core import exceptions

        with storage.translated(self.uri):
            blob = self.blob.bucket.get_blob(self.blob.name)
            if blob is None:
                return None
            try:
                data = blob.download_as_bytes()
            except exceptions.NotFound:  # Released between the two calls.
                return None
        # A newer object than the generation read (replaced in between) fails the takeover's
        # precondition: that run is refused or tries again, never both take it.
        return data, blob.generation, blob.updated.timestamp() if blob.updated else _now()

    def replace(self, expected, data):
        return self._conditional(lambda: self._upload(data, expected))

    def delete(self, expected):
        return self._conditional(lambda: self.blob.delete(if_generation_match=expected) or True)

    def _upload(self, data, generation):
        self.blob.upload_from_string(data, content_type="application/json", if_generation_match=generation)
        return self.blob.generation


def lease_uri(job_dir):
    """The lease's path or URI in ``job_dir``."""
    return storage.join(job_dir, LEASE_FILE)


class Lease:
    """The lease of one job dir, taken by :meth:`take`, given back by :meth:`release`.

    Args:
        job_dir: The job dir (local or ``gs://``).
        warn: Called with one line when a dead holder's lease is taken over or the lease is lost.
        every_s: Seconds between two heartbeats.
    """

    def __init__(self, job_dir, *, warn, every_s=HEARTBEAT_EVERY_S):
        self.job_dir = job_dir
        self.uri = lease_uri(job_dir)
        self.warn = warn
        self.every_s = every_s
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self.holder["job"] = job_id()
        self._version = None
        self._stop = threading.Event()
        self._thread = None
        self._store = _GcsObject(self.uri) if storage.is_gcs(self.uri) else _LocalFile(self.uri)

    def _data(self):
        return json.dumps({**self.holder, "heartbeat": _now()}, sort_keys=True).encode("utf-8")

    def take(self):
        """Takes the lease and starts the heartbeat; returns ``self``.

        Raises:
            LeaseHeldError: A live run holds it (the message names host, pid and since).
            LeaseError: The job dir cannot be reached.
        """
        self.holder["since"] = _now()
        token = self.holder["token"]
        # Known before the lease is written: another thread of this process reading it sees a live holder.
        _HELD_TOKENS.add(token)
        try:
            found = self._acquire()
        except OSError as error:
            _HELD_TOKENS.discard(token)
            raise LeaseError(f"cannot take the lease {self.uri}: {error}") from None
        if found is not None:
            _HELD_TOKENS.discard(token)
            raise LeaseHeldError(
                f"job dir {self.job_dir} is in use by another run ({describe(*found)}): wait for it to end "
                f"or use another job dir ({self.uri} is taken over once that pid has ended on this host, "
                f"or after {HEARTBEAT_TIMEOUT_S:.0f} s without a heartbeat)"
            )
        self._thread = threading.Thread(target=self._beat, name="job-dir-lease", daemon=True)
        self._thread.start()
        return self

    def _acquire(self):
        """Returns ``None`` once the lease is ours, else ``(holder, modified)`` of the live holder."""
        for _ in range(3):  # Each pass loses only to a run that just created or took over the lease.
            # Read before creating, though the create is conditional: the GCS emulator ignores preconditions.
            read = self._store.read()
            if read is None:
                self._version = self._store.create(self._data())
                if self._version is not None:
                    return None
                continue  # Created by another run in between: read it.
            data, version, modified = read
            holder = parse_holder(data)
            if holder is not None and holder["token"] == self.holder["token"]:
                # A retried create whose first try went through (the retry then fails its precondition).
                self._version = data if version is None else version
                return None
            if not is_gone(holder, modified):
                return holder, modified
            self._version = self._store.replace(data if version is None else version, self._data())
            if self._version is not None:
                self.warn(
                    f"took over the job dir's lease from a run that is gone ({describe(holder, modified)})"
                )
                return None
        read = self._store.read()
        return (parse_holder(read[0]), read[2]) if read else (None, _now())

    def _beat(self):
        failing = False
        while not self._stop.wait(self.every_s):
            try:
                self._version = self._store.replace(self._version, self._data())
            except OSError as error:
                if not failing:
                    self.warn(f"cannot refresh the job dir's lease {self.uri} (retrying): {error}")
                failing = True
                continue
            failing = False
            if self._version is None:
                self.warn(f"lost the job dir's lease {self.uri}: another run took it over")
                return

    def release(self):
        """Stops the heartbeat and deletes the lease if it is still ours; never raises."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        _HELD_TOKENS.discard(self.holder["token"])
        if self._version is None:
            return
        try:
            if self._store.delete(self._version) is None:
                self.warn(f"the job dir's lease {self.uri} was no longer this run's")
        except OSError as error:
            self.warn(f"cannot delete the job dir's lease {self.uri}: {error}")
        self._version = None


@contextlib.contextmanager
def held(job_dir, *, warn, chief=True, every_s=HEARTBEAT_EVERY_S):
    """A context manager: the job dir's lease is this run's inside the block (the chief's only).

    Workers of a cluster share the chief's job dir and take no lease. The lease
    is given back on every way out: a return, an exception, a SIGTERM turned
    into one (the trainer's preemption).

    Yields:
        The :class:`Lease`, or ``None`` for a worker.

    Raises:
        LeaseHeldError: A live run holds the lease.
        LeaseError: The job dir cannot be reached.
    """
    if not chief:
        yield None
        return
    lease = Lease(job_dir, warn=warn, every_s=every_s).take()
    try:
        yield lease
    finally:
        lease.release()
