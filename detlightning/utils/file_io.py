"""``PathManager``: the small subset of iopath's ``PathManager`` that detectron2-style code calls, for local paths.

detectron2 code routes every file access through ``PathManager.open(...)`` etc.; this shim keeps such code working.
Plain paths and ``file://`` URLs are served from the local file system. Other schemes (``s3://``, ``http://``,
``detectron2://`` ...) raise ``ValueError`` unless a resolver turning them into a local file was registered with
``PathManager.register_handler(prefix, resolver)`` (e.g. a downloader with a cache).
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from typing import IO, Any

__all__ = ["PathManager", "PathManagerBase"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_FILE_PREFIX = "file://"

PathLike = str | os.PathLike


class PathManagerBase:
    """Local-file ``PathManager``; URL prefixes can be mapped to local files by registered resolvers."""

    def __init__(self) -> None:
        self._resolvers: dict[str, Callable[[str], str]] = {}

    def register_handler(self, prefix: str, resolver: Callable[[str], str]) -> None:
        """Serve paths starting with ``prefix`` (e.g. ``"detectron2://"``) from ``resolver(path) -> local path``."""
        if not prefix:
            raise ValueError("register_handler needs a non-empty prefix such as 'detectron2://'")
        if prefix in self._resolvers:
            raise ValueError(f"a handler for prefix {prefix!r} is already registered")
        self._resolvers[prefix] = resolver

    def _local(self, path: PathLike, *, resolve_urls: bool) -> str:
        """``path`` as a local file-system path; ``ValueError`` for a URL scheme nothing handles."""
        path = os.fspath(path)
        if not isinstance(path, str):
            raise TypeError(f"path must be str or os.PathLike[str], got {type(path).__name__}: {path!r}")
        if path.startswith(_FILE_PREFIX):
            return path[len(_FILE_PREFIX):]
        m = _SCHEME.match(path)
        if m is None:
            return path
        # longest prefix wins, so "https://dl.fbaipublicfiles.com/" can override a generic "https://"
        for prefix in sorted(self._resolvers, key=len, reverse=True):
            if path.startswith(prefix):
                if not resolve_urls:
                    raise ValueError(f"{path!r}: only reading (open 'r'/'rb', exists, get_local_path) is supported "
                                     f"for {prefix!r} paths")
                return self._resolvers[prefix](path)
        supported = ", ".join(sorted([_FILE_PREFIX, *self._resolvers]))
        raise ValueError(
            f"unsupported path scheme {m.group(1)!r} in {path!r}: detlightning's PathManager handles local paths and "
            f"{supported}; download the file first or register a handler with PathManager.register_handler()"
        )

    def get_local_path(self, path: PathLike, **kwargs: Any) -> str:
        """A local file-system path for ``path`` (URLs go through their registered resolver)."""
        return self._local(path, resolve_urls=True)

    def open(self, path: PathLike, mode: str = "r", buffering: int = -1, **kwargs: Any) -> IO[Any]:
        """``open(path, mode)`` like the builtin; ``encoding``/``errors``/``newline`` kwargs pass through."""
        readonly = not any(c in mode for c in "wax+")
        local = self._local(path, resolve_urls=readonly)
        return open(local, mode, buffering, **kwargs)

    def exists(self, path: PathLike, **kwargs: Any) -> bool:
        return os.path.exists(self._local(path, resolve_urls=True))

    def isfile(self, path: PathLike, **kwargs: Any) -> bool:
        return os.path.isfile(self._local(path, resolve_urls=True))

    def isdir(self, path: PathLike, **kwargs: Any) -> bool:
        return os.path.isdir(self._local(path, resolve_urls=False))

    def ls(self, path: PathLike, **kwargs: Any) -> list[str]:
        """Names (not full paths) of the entries in directory ``path``, like ``os.listdir``."""
        return os.listdir(self._local(path, resolve_urls=False))

    def mkdirs(self, path: PathLike, **kwargs: Any) -> None:
        """``mkdir -p``; an empty path (e.g. ``os.path.dirname("log.txt")``) is a no-op."""
        local = self._local(path, resolve_urls=False)
        if local:
            os.makedirs(local, exist_ok=True)

    def rm(self, path: PathLike, **kwargs: Any) -> None:
        """Remove a file (``FileNotFoundError`` if absent; directories are refused like iopath does)."""
        os.remove(self._local(path, resolve_urls=False))

    def copy(self, src_path: PathLike, dst_path: PathLike, overwrite: bool = False, **kwargs: Any) -> bool:
        """Copy a file; ``FileExistsError`` when ``dst_path`` exists and not ``overwrite``."""
        src = self._local(src_path, resolve_urls=True)
        dst = self._local(dst_path, resolve_urls=False)
        if os.path.exists(dst) and not overwrite:
            raise FileExistsError(f"{dst!r} exists; pass overwrite=True to replace it")
        shutil.copyfile(src, dst)
        return True

    def rename(self, src_path: PathLike, dst_path: PathLike, **kwargs: Any) -> bool:
        os.replace(self._local(src_path, resolve_urls=False), self._local(dst_path, resolve_urls=False))
        return True

    def symlink(self, src_path: PathLike, dst_path: PathLike, **kwargs: Any) -> bool:
        os.symlink(self._local(src_path, resolve_urls=False), self._local(dst_path, resolve_urls=False))
        return True


PathManager = PathManagerBase()
