"""One live driver per run folder: a lease file that names the run holding the folder.

A driver takes the lease before it writes anything (nothing, Hydra's files included, is
written into the folder before) and renews it every `ttl / 4` seconds, advancing a counter in
it; a second driver finds it held and stops, naming the holder. Whether a holder is alive is
never judged by comparing clocks of two machines: a holder on this host (the same host name,
boot and PID namespace) is alive while its process is; a holder elsewhere is alive while its
counter advances, as watched for `ttl` seconds on the reader's own clock (so taking over a
crashed run's folder from another host waits up to `ttl`). A lease file that cannot be read
(torn by a crash, edited) is stale and named.

A driver stops before its next write once its lease is gone or names another run (checked
before every write; it never takes the folder back silently). On a local disk the lease file
is created whole or not at all (a hard link of a written temporary file: two drivers starting
together cannot both take it). Object stores offer no exclusive create through pyarrow: the
lease is written and read back, so two drivers started within the same moment may both pass;
the one whose lease was overwritten stops at its next write, which checks the file first.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Optional

from pipeline import io
from pipeline.run_folder import LEASE

TTL_SECONDS = 60.0

log = logging.getLogger("pipeline")


class LeaseError(RuntimeError):
    """The run folder is held by another live driver (or this driver lost its lease)."""


def new_run_id() -> str:
    """A run's id: when it started (sortable) and a random suffix (unique)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def this_host() -> str:
    """This machine as a lease names it: host name, boot and PID namespace (two containers
    with one host name, or a machine rebooted, are other hosts: their pids mean nothing here)."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:  # not Linux: the host name alone
        pass
    return "/".join(parts)


UNREADABLE = "unreadable"  # the key of what `_read` returns for a lease file that cannot be read


class Lease:
    """The lease of `root` for run `run_id`; use as a context manager around the run."""

    def __init__(self, root: str, run_id: str, ttl: float = TTL_SECONDS) -> None:
        self.root, self.run_id, self.ttl = root, run_id, ttl
        self.path = io.join(root, LEASE)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.lost: Optional[str] = None
        self.started: Optional[str] = None
        self.count = 0
        self.host = this_host()

    def _record(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "host": socket.gethostname(), "host_key": self.host, "pid": os.getpid(),
                "command": " ".join(sys.argv), "count": self.count, "ttl_s": self.ttl, "started": self.started,
                "renewed": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def _read(self) -> Optional[dict[str, Any]]:
        """The lease file's record; None when there is none; {UNREADABLE: why} when it cannot be read."""
        try:
            record = io.read_json(self.path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            return {UNREADABLE: f"{type(e).__name__}: {e}"}
        return record if isinstance(record, dict) and "run_id" in record else {UNREADABLE: "not a lease record"}

    def holder_alive(self, other: dict[str, Any]) -> bool:
        """Whether the run that wrote `other` may still be running: on this host, while its
        process is; elsewhere, while its renewal counter advances (watched up to its ttl)."""
        if other.get("host_key") == self.host:
            return _alive(int(other.get("pid", -1)))
        ttl = float(other.get("ttl_s", self.ttl))
        log.info("%s is held by run %r on %s: watching up to %.0f s whether it is still renewed", self.root,
                 other.get("run_id"), other.get("host"), ttl)
        deadline = time.monotonic() + ttl
        while time.monotonic() < deadline:
            time.sleep(min(ttl / 8, 1.0))
            now = self._read()
            if now is None:
                return False  # released
            if now != other:
                return True  # renewed (its counter advanced), or taken by a third run
        return False

    def acquire(self) -> None:
        """Take the lease, or raise LeaseError naming the run that holds it."""
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        io.makedirs(self.root)
        other = self._read()
        if other is not None and UNREADABLE in other:
            log.warning("%s cannot be read (%s): taken as a stale lease", self.path, other[UNREADABLE])
        elif other is not None and other.get("run_id") != self.run_id and self.holder_alive(other):
            raise LeaseError(self._held_by(self._read() or other))
        if io.is_uri(self.root):
            io.write_json(self._record(), self.path)
        else:
            self._create_locally(other)
        mine = self._read()
        if mine is None or mine.get("run_id") != self.run_id:
            raise LeaseError(self._held_by(mine or {}))
        self._thread = threading.Thread(target=self._renew, name="run-folder-lease", daemon=True)
        self._thread.start()

    def _create_locally(self, stale: Optional[dict[str, Any]]) -> None:
        """Create the lease file whole or not at all (a hard link of a written temporary file
        fails when the lease exists): of two drivers starting together, one gets it."""
        if stale is not None and self._read() == stale:  # a dead run's (or a torn) lease, still the same one
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        tmp = f"{self.path}.{self.run_id}.tmp"
        with open(tmp, "w") as f:
            json.dump(self._record(), f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            other = self._read() or {}
            raise LeaseError(self._held_by(other)) from None
        finally:
            os.remove(tmp)

    def _held_by(self, other: dict[str, Any]) -> str:
        return (f"{self.root} is in use by run {other.get('run_id')!r} (pid {other.get('pid')} on "
                f"{other.get('host')}, started {other.get('started')}, last renewed {other.get('renewed')} by its "
                f"clock: {other.get('command')!r}). Wait for it to finish, or use another run.output_dir; a lease "
                f"whose driver died is taken over (on its host at once, elsewhere after "
                f"{float(other.get('ttl_s', self.ttl)):.0f} s without a renewal).")

    def _lost(self, current: Optional[dict[str, Any]]) -> Optional[str]:
        """Why the lease file `current` says this run no longer holds the folder (None: it does)."""
        if current is None:
            return f"{self.path} was removed (by another driver, or by hand)"
        if UNREADABLE in current:
            return f"{self.path} cannot be read ({current[UNREADABLE]})"
        if current.get("run_id") != self.run_id:
            return self._held_by(current)
        return None

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            self.lost = self.lost or self._lost(self._read())
            if self.lost:
                return  # never written again: the folder is another run's now
            self.count += 1
            try:
                io.write_json(self._record(), self.path)
            except OSError:  # a transient storage error: the next renewal tries again
                pass

    def check(self) -> None:
        """Raise LeaseError unless the lease file still names this run (read now: before a write)."""
        self.lost = self.lost or self._lost(self._read())
        if self.lost:
            raise LeaseError(f"this run lost its lease on the run folder: {self.lost}")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current = self._read()
        if current is not None and current.get("run_id") == self.run_id:
            try:
                io.remove(self.path)
            except OSError:
                pass

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
