"""One run at a time per model folder: ``run.lock`` names the process (pid, host) writing there."""

from __future__ import annotations

import atexit
import json
import logging
import os
import platform
import secrets
import time
from pathlib import Path

log = logging.getLogger(__name__)


class ResultsLockedError(RuntimeError):
    """Another run is writing to the same results folder."""


class RunLock:
    """``run.lock`` in a model folder: the process (pid, host) of the run writing there, one run at a time.

    The processes of one run share the lock through the environment variable ``NBLIB_RUN_LOCK``: the
    opener sets it to its token, the workers it launches (fold workers, torchrun) inherit it and pass, as long as
    the holder is one of their ancestors (an inherited token alone does not let a second job in).
    A lock whose process is gone (same host, no such pid) is taken over with a warning; on another host
    liveness cannot be checked, so the message says when to delete the file.
    """

    ENV = "NBLIB_RUN_LOCK"

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / "run.lock"

    def acquire(self) -> None:
        """Take the lock, or pass when this run's opener holds it; raise :class:`ResultsLockedError` when
        another live run does."""
        token = os.environ.setdefault(self.ENV, secrets.token_hex(8))
        me = {"pid": os.getpid(), "host": platform.node(), "token": token, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{secrets.token_hex(3)}")
        tmp.write_text(json.dumps(me))
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # atomic: fails if the lock exists, never leaves half a file
                except FileExistsError:
                    other = self.holder()
                    if other.get("token") == token and self._holder_is_my_run(other):
                        return
                    if not self._stale(other):
                        raise ResultsLockedError(self._message(other)) from None
                    log.warning(
                        "%s: taking over the lock of process %s on %s, which is gone.",
                        self.path.parent,
                        other.get("pid"),
                        other.get("host"),
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                atexit.register(self.release)
                return
            raise ResultsLockedError(self._message(self.holder()))
        finally:
            tmp.unlink()

    def holder(self) -> dict:
        """What the lock file says (pid, host, token, since); empty when there is none."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        """Remove the lock if this process took it (a worker that shares its opener's lock leaves it)."""
        if self.holder().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    @staticmethod
    def _holder_is_my_run(other: dict) -> bool:
        """Whether the holder that has this process's token is its run: this process, or (same host) one of its
        ancestors (the opener of the workers); a token inherited from elsewhere (a sibling started by the same
        parent, a shell that exported it) does not pass while its holder lives. On another host ancestry cannot be
        checked, and the token is trusted."""
        import psutil

        if other.get("host") != platform.node() or other.get("pid") == os.getpid():
            return True
        try:
            ancestors = {p.pid for p in psutil.Process().parents()}
        except psutil.Error:
            return True
        return other.get("pid") in ancestors

    @staticmethod
    def _stale(other: dict) -> bool:
        """The lock's process is gone: same host and no such pid (or our own pid, left by an earlier process)."""
        if other.get("host") != platform.node() or not isinstance(other.get("pid"), int):
            return False
        if other["pid"] == os.getpid():
            return True
        try:
            os.kill(other["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def _message(self, other: dict) -> str:
        return (
            f"{self.path.parent} is in use by another run: process {other.get('pid')} on host "
            f"{other.get('host')}, since {other.get('since')}. Wait for it to finish or stop it; two runs on one "
            f"folder would train the same folds. If that process is an idle Jupyter kernel whose run was "
            f"interrupted, restart that kernel; if it no longer exists (e.g. killed on another machine), "
            f"delete {self.path}."
        )
