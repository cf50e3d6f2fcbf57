"""Resolve checkpoint paths and URLs to local files.

* local paths (``~`` expanded) and ``file://`` URLs are used as they are;
* ``detectron2://X`` means ``https://dl.fbaipublicfiles.com/detectron2/X`` (detectron2's model zoo);
* ``catalog://X`` names a Detectron1-era file (see :class:`~detlightning.checkpoint.catalog.ModelCatalog`);
* ``http(s)://`` URLs are looked up in a local cache that mirrors the URL path
  (``$DETLIGHTNING_CACHE`` or ``~/.torch/detlightning_cache``) and downloaded there when missing.

Without network access (or with ``DETLIGHTNING_OFFLINE=1``) a missing file raises
:class:`FileNotFoundError` naming the URL and the exact local path to place a copy at.
"""
from __future__ import annotations

import logging
import os
import shutil
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from .catalog import ModelCatalog

__all__ = [
    "CACHE_ENV",
    "OFFLINE_ENV",
    "DETECTRON2_PREFIX",
    "S3_DETECTRON2_PREFIX",
    "get_cache_dir",
    "resolve_url",
    "cached_path_for_url",
    "is_url",
    "get_local_path",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "DETLIGHTNING_CACHE"
OFFLINE_ENV = "DETLIGHTNING_OFFLINE"
DETECTRON2_PREFIX = "detectron2://"
CATALOG_PREFIX = "catalog://"
S3_DETECTRON2_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"
_DOWNLOAD_TIMEOUT_S = 60.0


def get_cache_dir() -> Path:
    """Root of the download cache: ``$DETLIGHTNING_CACHE`` or ``~/.torch/detlightning_cache``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path("~/.torch/detlightning_cache").expanduser()


def resolve_url(path: str) -> str:
    """Expand ``detectron2://`` and ``catalog://`` prefixes to http(s) URLs; anything else is returned as is."""
    if path.startswith(DETECTRON2_PREFIX):
        return S3_DETECTRON2_PREFIX + path[len(DETECTRON2_PREFIX) :]
    if path.startswith(CATALOG_PREFIX):
        url = ModelCatalog.get(path[len(CATALOG_PREFIX) :])
        logger.info("Catalog entry %s points to %s", path, url)
        return url
    return path


def is_url(path: str) -> bool:
    """Whether ``path`` is (or resolves to) an http(s) URL."""
    return resolve_url(path).startswith(("http://", "https://"))


def cached_path_for_url(url: str) -> Path:
    """Where the cache keeps ``url``: the cache dir joined with the URL's path (host dropped, like iopath)."""
    parsed = urlparse(resolve_url(url))
    rel = unquote(parsed.path).lstrip("/")
    if not rel or rel.endswith("/"):
        raise ValueError(f"URL {url!r} does not name a file (its path is {parsed.path!r})")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"URL {url!r} has '..' in its path; refusing to map it into the cache")
    return get_cache_dir().joinpath(*parts)


def _download(url: str, dst: Path) -> None:
    """Fetch ``url`` into ``dst`` atomically (a partial download never appears under ``dst``)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.part.{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f, length=1 << 20)
        os.replace(tmp, dst)  # atomic, so concurrent ranks downloading the same file are harmless
    finally:
        if tmp.exists():
            tmp.unlink()


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def get_local_path(path: str | os.PathLike[str]) -> str:
    """A local file for ``path``: the path itself, or the cached download of a URL.

    Raises:
        FileNotFoundError: a URL is neither cached nor downloadable; the message names the URL and the
            local path where a manually downloaded copy is picked up.
    """
    path = os.fspath(path)
    if path.startswith("file://"):
        return unquote(urlparse(path).path)
    url = resolve_url(path)
    if not url.startswith(("http://", "https://")):
        return os.path.expanduser(path)
    local = cached_path_for_url(url)
    if local.is_file():
        logger.info("Using cached %s for %s", local, url)
        return str(local)
    reason, cause = f"{OFFLINE_ENV} is set", None
    if not _offline():
        logger.info("Downloading %s to %s ...", url, local)
        try:
            _download(url, local)
            return str(local)
        except Exception as e:  # no network, HTTP error, read-only cache, ...: all end in the same advice
            reason, cause = f"{type(e).__name__}: {e}", e
    raise FileNotFoundError(
        f"Cannot download {url} ({reason}). Download it manually and place it at {local} "
        f"(the cache root is ${CACHE_ENV} or ~/.torch/detlightning_cache), then load {path!r} again."
    ) from cause
