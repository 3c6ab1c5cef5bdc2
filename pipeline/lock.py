"""One writer per table: a lock object next to the table, so two jobs never write the same table at once.

The lock is a small JSON file ``<sink.uri>/<table>.lateline-lock`` holding the run id, host, pid and start time.
The holder refreshes a heartbeat in it at every commit. A second job finds it and refuses with a message naming
the holder. A lock left by a killed job is taken over: at once on the same host (its pid is gone), from another
host once its heartbeat is older than ``STALE_AFTER``. On the same host a pid counts as the holder's only if the
process also started when the holder's did (``process_start``: boot id and start time, where ``/proc`` has
them), so a pid reused after the job died, or after a reboot, does not keep the lock. On object stores without
exclusive create, the check is best-effort (read-then-write).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pipeline.storage_options import as_s3fs_options

STALE_AFTER = timedelta(minutes=30)


class TableLocked(RuntimeError):
    """Another live job holds the table's lock."""


class TableLock:
    def __init__(self, uri: str, table: str, run_id: str, storage_options: dict[str, Any] | None = None) -> None:
        self.fs, root = url_to_fs(uri, **as_s3fs_options(storage_options or {}))
        self.path = f"{root.rstrip('/')}/{table}.lateline-lock"
        self.display = f"{uri.rstrip('/')}/{table}.lateline-lock"
        self.owner = {
            "run_id": run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": process_start(os.getpid()),
            "since": datetime.now(timezone.utc).isoformat(),
            "heartbeat": datetime.now(timezone.utc).isoformat(),
        }
        self.held = False
        self.taken_over: dict[str, Any] | None = None  # the dead job whose lock :meth:`acquire` took over

    def refuse_if_held(self) -> None:
        """Raise :class:`TableLocked` naming the live holder, if there is one; creates nothing (a cheap check
        before a job's slow preparation; :meth:`acquire` checks again)."""
        holder = self.live_holder()
        if holder is not None:
            raise TableLocked(self._held_by(holder))

    def acquire(self) -> None:
        """Take the lock or raise :class:`TableLocked` naming the live holder."""
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        if self.fs.exists(self.path):
            holder = self._holder()
            if holder is not None and _alive(holder):
                raise TableLocked(self._held_by(holder))
            self.taken_over = holder
            self.fs.rm(self.path)
        try:
            with self.fs.open(self.path, "xb") as handle:
                handle.write(json.dumps(self.owner).encode())
        except FileExistsError:
            raise TableLocked(f"another job took the lock {self.display} just now") from None
        except (ValueError, NotImplementedError):  # no exclusive create on this filesystem
            self.fs.pipe(self.path, json.dumps(self.owner).encode())
        self.held = True
        self._remove_stale_heartbeats()

    def _remove_stale_heartbeats(self) -> None:
        """Drop heartbeats a job staged (see :meth:`refresh`) and never renamed because it was killed in between:
        whoever staged them is dead now that this job holds the lock."""
        if isinstance(self.fs, LocalFileSystem):
            for staged in self.fs.glob(f"{self.path}.*.tmp"):
                with contextlib.suppress(OSError):  # tidying only; the lock is held either way
                    self.fs.rm(staged)

    def refresh(self) -> None:
        """Renew the heartbeat (called at every commit). The file is replaced whole: a job killed while
        writing it must leave a lock that names it, so that the job taking over marks its summary interrupted."""
        if self.held:
            self.owner["heartbeat"] = datetime.now(timezone.utc).isoformat()
            data = json.dumps(self.owner).encode()
            if isinstance(self.fs, LocalFileSystem):  # (writing in place truncates first; a rename is atomic)
                staged = f"{self.path}.{os.getpid()}.tmp"
                self.fs.pipe(staged, data)
                os.replace(staged, self.path)
            else:  # an object store's PUT replaces the object whole
                self.fs.pipe(self.path, data)

    def release(self) -> None:
        holder = self._holder() if self.held and self.fs.exists(self.path) else None
        if holder is not None and holder.get("run_id") == self.owner["run_id"]:
            self.fs.rm(self.path)
        self.held = False

    def live_holder(self) -> dict[str, Any] | None:
        """The job holding this lock now, or ``None`` (no lock, or one left by a dead job)."""
        holder = self._holder() if self.fs.exists(self.path) else None
        return holder if holder is not None and _alive(holder) else None

    def _held_by(self, holder: dict[str, Any]) -> str:
        where = (
            f"run {holder.get('run_id')} (pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')})"
        )
        if holder.get("host") == socket.gethostname():  # a dead holder here would have been taken over already
            return f"table is being written by {where}; wait for it to finish"
        return (
            f"table is being written by {where}; wait for it to finish. A job on another host that died is "
            f"taken over once its heartbeat ({holder.get('heartbeat')}) is {STALE_AFTER.seconds // 60} minutes "
            f"old; delete {self.display} sooner only if you know that job is dead"
        )

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat(self.path))
        except (OSError, ValueError):
            return None

    def __enter__(self) -> TableLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def process_start(pid: int) -> str | None:
    """``<boot id>:<start time in clock ticks>`` of process ``pid``: the same pid with another value is another
    process. ``None`` where ``/proc`` does not tell (not Linux, or the process is gone)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) counted after the command name, which is in parentheses and may hold spaces.
    return f"{boot}:{stat[stat.rindex(')') + 2 :].split()[19]}"


def _alive(holder: dict[str, Any]) -> bool:
    """A holder on this host is alive while its pid exists and (when the lock recorded it) is the same process;
    one on another host while its heartbeat is fresh."""
    if holder.get("host") != socket.gethostname():
        try:
            beat = datetime.fromisoformat(holder["heartbeat"])
        except (KeyError, TypeError, ValueError):
            return True
        return datetime.now(timezone.utc) - beat < STALE_AFTER
    try:
        pid = int(holder.get("pid", -1))
    except (ValueError, TypeError):
        return True  # a lock we cannot read is not ours to break
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive unless its start says it is another process
    recorded, now = holder.get("process_start"), process_start(pid)
    return not (recorded and now and recorded != now)
