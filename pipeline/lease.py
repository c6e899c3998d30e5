"""One live driver per run folder: a lease file that names the run holding the folder.

A driver takes the lease before it writes anything and renews it in the background every
`ttl / 4` seconds; a second driver finds it held and stops, naming the holder. A lease whose
holder died stops being renewed: it is taken over once it is `ttl` seconds old, or at once
when its holder ran on this host and its process is gone (a crashed or killed run resumes
without waiting). A driver that finds its lease taken over (it was suspended longer than `ttl`)
stops before its next write instead of overwriting the other run's work.

On a local disk the lease file is created whole or not at all (a hard link of a written
temporary file: two drivers starting together cannot both take it); on an object store, where
there is no exclusive create, it is written and read back.
"""

from __future__ import annotations

import json
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


class Lease:
    """The lease of `root` for run `run_id`; use as a context manager around the run."""

    def __init__(self, root: str, run_id: str, ttl: float = TTL_SECONDS) -> None:
        self.root, self.run_id, self.ttl = root, run_id, ttl
        self.path = io.join(root, LEASE)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.lost: Optional[str] = None
        self.started: Optional[str] = None

    def _record(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                "command": " ".join(sys.argv), "renewed": time.time(), "ttl_s": self.ttl,
                "started": self.started}

    def _read(self) -> Optional[dict[str, Any]]:
        try:
            return io.read_json(self.path)
        except (FileNotFoundError, OSError, ValueError):
            return None

    def holder_alive(self, other: dict[str, Any]) -> bool:
        """Whether the run that wrote `other` may still be running."""
        if time.time() - float(other.get("renewed", 0)) > float(other.get("ttl_s", self.ttl)):
            return False
        if other.get("host") == socket.gethostname() and not _alive(int(other.get("pid", -1))):
            return False
        return True

    def acquire(self) -> None:
        """Take the lease, or raise LeaseError naming the run that holds it."""
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        io.makedirs(self.root)
        other = self._read()
        if other is not None and other.get("run_id") != self.run_id and self.holder_alive(other):
            raise LeaseError(self._held_by(other))
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
        if stale is not None and self._read() == stale:  # a dead run's lease, still the same one
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        tmp = f"{self.path}.{self.run_id}.tmp"
        with open(tmp, "w") as f:
            json.dump(self._record(), f)
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            other = self._read() or {}
            raise LeaseError(self._held_by(other)) from None
        finally:
            os.remove(tmp)

    def _held_by(self, other: dict[str, Any]) -> str:
        age = time.time() - float(other.get("renewed", time.time()))
        return (f"{self.root} is in use by run {other.get('run_id')!r} (pid {other.get('pid')} on "
                f"{other.get('host')}, started {other.get('started')}, renewed {age:.0f} s ago: "
                f"{other.get('command')!r}). Wait for it to finish, or use another run.output_dir; a lease whose "
                f"driver died is taken over after {float(other.get('ttl_s', self.ttl)):.0f} s.")

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            current = self._read()
            if current is not None and current.get("run_id") != self.run_id:
                self.lost = self._held_by(current)
                return
            try:
                io.write_json(self._record(), self.path)
            except OSError:  # a transient storage error: the next renewal tries again
                pass

    def check(self) -> None:
        """Raise LeaseError when another run took the lease over (before a write)."""
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
