"""Crash-safe checkpoint files: atomic writes, stale-temp cleanup, and finding the newest readable checkpoint.

Every checkpoint (``.pth``, ``.ckpt``, the ``last_checkpoint`` tag) is written to ``<dest>.tmp.<pid>`` *in the
destination folder*, flushed and fsynced, then renamed over ``<dest>``. A rename within one folder is atomic on
POSIX and Windows file systems, so a reader sees either the old complete file or the new complete one; writing
the temp file under ``$TMPDIR`` instead would turn the final move into a non-atomic copy when ``$TMPDIR`` is on
another file system. On any error (disk full, interrupt) the temp file is removed and ``<dest>`` is untouched;
a process killed mid-write leaves only ``<dest>.tmp.<pid>``, removed by :func:`remove_stale_temp_files`.
"""
from __future__ import annotations

import logging
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable
from typing import IO, Any

import torch

__all__ = [
    "CheckpointDamagedError",
    "atomic_write",
    "atomic_torch_save",
    "checkpoint_file_problem",
    "newest_valid_checkpoint",
    "remove_stale_temp_files",
]

logger = logging.getLogger(__name__)

_TMP_RE = re.compile(r"^(?P<dest>.+)\.tmp\.(?P<pid>\d+)$")
# first byte of a pickle of protocol >= 2: legacy (non-zip) torch.save files and .pkl files start with it
_PICKLE_PROTO = 0x80


class CheckpointDamagedError(RuntimeError):
    """A checkpoint file is empty, truncated or not a checkpoint at all (the message names the file)."""


def _open_for_write(path: str) -> IO[bytes]:
    """A new file opened for binary writing; fails if ``path`` exists (never clobbers another writer's file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    return os.fdopen(fd, "wb")


def _fsync_dir(directory: str) -> None:
    """Persist a rename in ``directory`` (best effort: not every OS / file system can open a folder)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Create or replace ``path`` with what ``write(f)`` writes to a binary file ``f``, all or nothing.

    The data goes to ``<path>.tmp.<pid>`` in ``path``'s folder, is flushed and fsynced, then renamed over
    ``path``. If anything fails (e.g. ``OSError(ENOSPC)``), the temp file is removed, the error propagates,
    and an existing ``path`` keeps its previous content.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp.{os.getpid()}"
    if os.path.lexists(tmp):  # left by an earlier failed attempt of this very process
        os.remove(tmp)
    f = _open_for_write(tmp)
    try:
        try:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        finally:
            f.close()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`; a failed write raises ``OSError`` (torch reports
    it as a ``RuntimeError`` of its zip writer, with the ``OSError`` as context)."""

    def write(f: IO[bytes]) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as e:
            cause = e.__context__
            if not isinstance(cause, OSError):
                raise
            raise OSError(cause.errno, f"{cause.strerror or cause} (while saving {os.fspath(path)})") from e

    atomic_write(path, write)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else, or cannot tell: keep its file
    return True


def remove_stale_temp_files(directory: str | os.PathLike[str]) -> list[str]:
    """Delete ``*.tmp.<pid>`` files in ``directory`` left by killed writers (whose process no longer runs).

    Returns the removed paths (each is logged). Files of live processes on this host are kept.
    """
    directory = os.fspath(directory)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        m = _TMP_RE.match(name)
        if m is None or _pid_alive(int(m.group("pid"))):
            continue
        path = os.path.join(directory, name)
        try:
            size = os.path.getsize(path)
            os.remove(path)
        except FileNotFoundError:
            continue
        except OSError as e:
            logger.warning("Could not remove the unfinished checkpoint file %s: %s", path, e)
            continue
        logger.warning("Removed %s (%.1f MiB), an unfinished checkpoint of an interrupted run", path, size / 2**20)
        removed.append(path)
    return removed


def checkpoint_file_problem(path: str | os.PathLike[str]) -> str | None:
    """``None`` if ``path`` looks like a complete ``torch.save`` file, else what is wrong with it.

    A zip-format file (what ``torch.save`` writes) is checked entry by entry against its CRCs, which catches
    truncation and corruption without unpickling anything. A legacy (non-zip) torch file is only checked to
    start like a pickle. Reads the whole file once.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "the file is empty (0 bytes)"
        with open(path, "rb") as f:
            first = f.read(1)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if zipfile.is_zipfile(path):
        return _zip_problem(path)
    if first == b"P":  # "PK\x03\x04": a zip archive whose end (the central directory) is missing
        return f"the zip archive is truncated: its central directory is missing ({size} bytes)"
    if first[0] == _PICKLE_PROTO:
        return None
    return f"it is neither a torch.save zip archive nor a pickle ({size} bytes starting with {first!r})"


def _zip_problem(path: str) -> str | None:
    """Read every entry of a zip archive, checking the CRCs that were written (torch can skip them)."""
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                try:
                    with z.open(info) as f:
                        while f.read(1 << 22):
                            pass
                except zipfile.BadZipFile as e:
                    if info.CRC == 0 and "CRC" in str(e):  # saved with compute_crc32=False
                        continue
                    return f"the archive entry {info.filename!r} is damaged ({e})"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
        return f"the archive is truncated or damaged ({e})"
    return None


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return float("-inf")


def newest_valid_checkpoint(preferred: str | None, candidates: Iterable[str]) -> str | None:
    """``preferred`` if it is an intact checkpoint, else the newest (by modification time) intact one of
    ``candidates``; each damaged file is reported by path at WARNING. ``None`` if none is usable."""
    tried: set[str] = set()
    if preferred and os.path.isfile(preferred):
        tried.add(os.path.abspath(preferred))
        problem = checkpoint_file_problem(preferred)
        if problem is None:
            return preferred
        logger.warning("Checkpoint %s is damaged and cannot be resumed from: %s", preferred, problem)
    elif preferred:
        logger.warning("Checkpoint %s does not exist", preferred)
    for path in sorted(candidates, key=lambda p: (_mtime(p), p), reverse=True):
        if os.path.abspath(path) in tried or not os.path.isfile(path):
            continue
        tried.add(os.path.abspath(path))
        problem = checkpoint_file_problem(path)
        if problem is None:
            if preferred:
                logger.warning("Using the newest intact checkpoint %s instead of %s", path, preferred)
            return path
        logger.warning("Checkpoint %s is damaged and skipped: %s", path, problem)
    return None
