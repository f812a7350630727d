"""One writer per workdir: an advisory lock on disks, a lease in buckets.

`Lock` is what a run takes before it writes anything (`jvision.safety.rundir`); a second run on
the same workdir is refused with one line naming the holder.
"""

import datetime
import fcntl
import logging
import os
import socket
import threading
import time
import uuid

from etils import epath

from jvision.errors import UserError
from jvision.safety.files import is_uri, read_json, write_json

log = logging.getLogger(__name__)

HOLDER_FILE = ".jvision_lock.json"


class Lock:
    """One training process per workdir.

    On disks: an advisory `flock` on the workdir directory itself. The OS releases it when the
    holder exits or dies (kill -9 included), so it never goes stale. While held, `HOLDER_FILE`
    names the holder (pid, host, start) for the one-line refusal; it is written only once the run
    has passed its checks (a refused run writes nothing), removed at exit, and a record whose pid
    is dead on this host is not believed. Local disks and NFSv4 enforce it across hosts.

    In a bucket (`gs://`), which has no locks: a `Lease`, which makes a second run refuse while the
    first one lives, but cannot make two runs starting together exclude each other with
    certainty (see `Lease`).
    """

    def __init__(self, root: epath.Path):
        self.root = root
        self._descriptor: int | None = None
        self._lease: Lease | None = None

    def acquire(self) -> None:
        """Takes the lock (creating the workdir if needed); `UserError` if another run holds it."""
        if is_uri(self.root):
            lease = Lease(self.root)
            lease.take()
            self._lease = lease
            return
        self.root.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise UserError(
                f"{self.root} is in use by another run ({self._holder()}); wait for it to finish, "
                "stop it (SIGTERM saves a checkpoint), or use another --workdir"
            ) from None
        self._descriptor = descriptor

    def _holder(self) -> str:
        """Who holds the lock, as its holder recorded it; a record left by a run that died
        (kill -9: its pid is gone from this host) names nobody."""
        try:
            holder = read_json(self.root / HOLDER_FILE)
            pid, host, since = int(holder["pid"]), holder["host"], holder["since"]
        except (OSError, ValueError, KeyError, TypeError):
            return "a run starting up: it has not recorded itself yet"
        if host == socket.gethostname() and not _alive(pid):
            return "a run starting up: the record there is a dead run's"
        return f"pid {pid} on {host}, since {since}"

    def announce(self) -> None:
        """Records who holds the lock (after the run's checks, so refused runs write nothing).
        A lease records its holder from the start."""
        if self._descriptor is not None:
            since = datetime.datetime.now().isoformat(timespec="seconds")
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
            write_json(self.root / HOLDER_FILE, holder)

    def release(self) -> None:
        """Drops the lock; its record is removed where the workdir can still be written."""
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        if self._descriptor is not None:
            try:
                if (self.root / HOLDER_FILE).exists():
                    (self.root / HOLDER_FILE).unlink()
            except OSError:  # A read-only or full workdir: the record stays, naming a dead pid.
                pass
            os.close(self._descriptor)  # Closing the descriptor drops the flock.
            self._descriptor = None


LEASE_FILE = ".jvision_lease.json"
LEASE_RENEW_SECS = 30.0  # How often the holder rewrites its heartbeat.
LEASE_FRESH_SECS = 90.0  # A lease renewed more recently than this refuses other runs.
LEASE_SETTLE_SECS = 1.0  # How long a new holder waits before reading its lease back.


class Lease:
    """A bucket workdir's claim by one run: `LEASE_FILE` holds the holder's pid, host, start, a
    random token and a heartbeat time, rewritten every `renew_secs` by a daemon thread and removed
    at `release`. Another run refuses to start while the heartbeat is younger than `fresh_secs`
    (one `UserError` line naming the holder); an older lease, or one whose pid is dead on this
    host (kill -9), is taken over. A run refused after taking it (a check that fails later)
    removes it again.

    Buckets offer no atomic create-if-absent through `etils.epath`, so taking a lease is read,
    check, write, then read back after `settle_secs`: of two runs whose writes land within that
    time of each other, only the last writer keeps it, the other refuses. What it cannot catch:
    a starter whose read and write are more than `settle_secs` apart (a stalled process, a slow
    network) racing another starter; a holder stalled longer than `fresh_secs` (suspended, cut
    off from the bucket), whose lease is taken over: it sees that at its next renewal, says so
    in the log, stops renewing, but keeps training; and clocks of different hosts more than a
    few seconds apart (the heartbeat's age is the reader's clock minus the holder's).
    """

    def __init__(
        self,
        root: epath.Path,
        renew_secs: float = LEASE_RENEW_SECS,
        fresh_secs: float = LEASE_FRESH_SECS,
        settle_secs: float = LEASE_SETTLE_SECS,
    ):
        self.file = root / LEASE_FILE
        self.renew_secs, self.fresh_secs, self.settle_secs = renew_secs, fresh_secs, settle_secs
        self.token = uuid.uuid4().hex
        self._since = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self) -> None:
        """Claims the workdir, or raises `UserError` naming the run that holds it."""
        holder = self._read()
        if holder is not None and self._fresh(holder):
            raise UserError(
                f"{self.file.parent} is in use by another run ({_describe(holder)}); wait for it "
                "to finish, stop it (SIGTERM saves a checkpoint), or use another --workdir (a "
                f"lease not renewed for {self.fresh_secs:.0f} s is taken over)"
            )
        self._since = datetime.datetime.now().isoformat(timespec="seconds")
        self._write()
        time.sleep(self.settle_secs)
        holder = self._read()
        if holder is None or holder.get("token") != self.token:
            who = "its lease vanished meanwhile" if holder is None else _describe(holder)
            raise UserError(
                f"{self.file.parent} was taken by another run starting at the same moment "
                f"({who}); use another --workdir, or start one run at a time"
            )
        self._thread = threading.Thread(target=self._renew, name="jvision-lease", daemon=True)
        self._thread.start()

    @property
    def renewing(self) -> bool:
        """Whether the heartbeat runs: from `take` until `release`, or until it finds the lease
        taken over by another run."""
        return self._thread is not None and self._thread.is_alive()

    def release(self) -> None:
        """Stops renewing and removes the lease, if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            holder = self._read()
            if holder is not None and holder.get("token") == self.token:
                self.file.unlink()
        except Exception as error:  # Any backend's failure (TensorFlow's are not OSErrors).
            log.warning(
                "could not remove the lease %s (it goes stale by itself): %s", self.file, error
            )

    def _renew(self) -> None:
        """The heartbeat: rewrites the lease every `renew_secs` while it is this run's."""
        while not self._stop.wait(self.renew_secs):
            try:
                holder = self._read()
                if holder is not None and holder.get("token") != self.token:
                    log.error(
                        "the lease on %s was taken over by another run (%s): two runs are "
                        "writing this workdir; stop one of them",
                        self.file.parent,
                        _describe(holder),
                    )
                    return
                self._write()
            except Exception as error:  # Any backend's failure: try again at the next beat.
                log.warning("could not renew the lease %s: %s", self.file, error)

    def _fresh(self, holder: dict) -> bool:
        """Whether a lease read from the bucket still excludes others."""
        try:
            age = time.time() - float(holder["renewed"])
            pid, host = int(holder["pid"]), holder["host"]
        except (KeyError, TypeError, ValueError):
            return False  # Unreadable: nobody can be shown to hold it.
        if host == socket.gethostname() and not _alive(pid):
            return False
        return age < self.fresh_secs

    def _read(self) -> dict | None:
        """The lease as recorded: None when there is none, `{}` when it is not a JSON object."""
        try:
            holder = read_json(self.file)
        except FileNotFoundError:
            return None
        except ValueError:
            return {}
        return holder if isinstance(holder, dict) else {}

    def _write(self) -> None:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": self._since,
            "renewed": time.time(),
            "token": self.token,
        }
        write_json(self.file, holder)


def _describe(holder: dict) -> str:
    """A lease's holder, for a message: pid, host, start and the heartbeat's age."""
    try:
        age = f"renewed {max(0.0, time.time() - float(holder['renewed'])):.0f} s ago"
    except (KeyError, TypeError, ValueError):
        age = "never renewed"
    return (
        f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since "
        f"{holder.get('since', '?')}, {age}"
    )


def _alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Someone else's process: alive.
        return True
    return True
