"""Writing a file so that no reader ever sees half of it, and a write the disk refuses as one clear error.

A file that a reader must never find half-written (a run's config, each fold's results, pseudo-labels, TAPT's
record) is written through :func:`write_atomic`: into a temporary file in the same folder, then renamed over
the target. A write refused by the disk (read-only,
no permission) becomes one :class:`ResultsFolderError` that names the file and what to do (:func:`writing`).
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .sheets import DataError


class ResultsFolderError(DataError):
    """The results folder cannot be written (a read-only disk, no permission); the message says what to do."""


NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


@contextmanager
def writing() -> Iterator[None]:
    """Turn a write refused in the results folder (read-only disk, no permission) into one
    :class:`ResultsFolderError` that names the file and what to do; other errors pass unchanged."""
    try:
        yield
    except OSError as e:
        if e.errno not in NOT_WRITABLE:
            raise
        raise ResultsFolderError(
            f"Cannot write {e.filename}: {e.strerror}. The results folder must be writable: pass "
            f"results_dir=<a folder you can write> (copy the study folder there first to keep its results), or "
            f"make this folder writable."
        ) from None


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file so that an interrupted run never leaves half a file.

    The temporary name is unique (several processes may write the same file, e.g. config.json), and it
    is in the same folder, so that the final rename is atomic. The file gets the usual mode (0666 less the
    umask, as ``open`` gives), so that others sharing the folder can read it.

    Args:
        path: the file to write.
        write: writes the content to the path it is given (the temporary file).
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}")
    with writing():
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # mode as open() gives, unlike mkstemp
    try:
        with writing():
            write(tmp)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
