"""Logging setup and rate-limited logging helpers (detectron2's ``utils.logger``)."""
from __future__ import annotations

import atexit
import functools
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Hashable
from typing import IO, Any

from tabulate import tabulate

from .file_io import PathManager

__all__ = [
    "create_small_table",
    "log_every_n",
    "log_every_n_seconds",
    "log_first_n",
    "setup_logger",
]

_PLAIN_FORMAT = "[%(asctime)s] %(name)s %(levelname)s: %(message)s"
_DATEFMT = "%m/%d %H:%M:%S"

# ANSI escape codes (no termcolor dependency)
_GREEN, _RED, _BLINK, _UNDERLINE, _RESET = "\x1b[32m", "\x1b[31m", "\x1b[5m", "\x1b[4m", "\x1b[0m"


class _ColorfulFormatter(logging.Formatter):
    """Shortens the root logger name to ``abbrev_name`` and highlights WARNING / ERROR prefixes."""

    def __init__(self, *args: Any, root_name: str, abbrev_name: str, **kwargs: Any) -> None:
        self._root_name = root_name + "."
        self._abbrev_name = abbrev_name + "." if abbrev_name else ""
        super().__init__(*args, **kwargs)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging API)
        record.name = record.name.replace(self._root_name, self._abbrev_name, 1)
        log = super().formatMessage(record)
        if record.levelno == logging.WARNING:
            prefix = f"{_RED}{_BLINK}WARNING{_RESET}"
        elif record.levelno >= logging.ERROR:
            prefix = f"{_RED}{_BLINK}{_UNDERLINE}ERROR{_RESET}"
        else:
            return log
        return prefix + " " + log


@functools.lru_cache  # same arguments twice must not attach the handlers twice
def setup_logger(
    output: str | os.PathLike | None = None,
    distributed_rank: int = 0,
    *,
    color: bool = True,
    name: str = "detlightning",
    abbrev_name: str | None = None,
    enable_propagation: bool = False,
    configure_stdout: bool = True,
) -> logging.Logger:
    """Configure logger ``name`` at DEBUG level and return it.

    Args:
        output: a file name ending in ``.txt``/``.log``, or a directory (the log goes to ``output/log.txt``).
            Ranks > 0 write ``<file>.rank{r}``. ``None``: no file.
        distributed_rank: only rank 0 logs to stdout.
        color: colourful stdout records.
        abbrev_name: short form of ``name`` in stdout records (default ``"dl"`` for ``"detlightning"``).
        enable_propagation: also pass records to the parent loggers.
        configure_stdout: attach the stdout handler (on rank 0).
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = enable_propagation
    if abbrev_name is None:
        abbrev_name = "dl" if name == "detlightning" else name
    plain_formatter = logging.Formatter(_PLAIN_FORMAT, datefmt=_DATEFMT)

    if configure_stdout and distributed_rank == 0:
        ch = logging.StreamHandler(stream=sys.stdout)
        ch.setLevel(logging.DEBUG)
        if color:
            ch.setFormatter(
                _ColorfulFormatter(
                    f"{_GREEN}[%(asctime)s %(name)s]: {_RESET}%(message)s",
                    datefmt=_DATEFMT,
                    root_name=name,
                    abbrev_name=str(abbrev_name),
                )
            )
        else:
            ch.setFormatter(plain_formatter)
        logger.addHandler(ch)

    if output is not None:
        output = os.fspath(output)
        filename = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
        if distributed_rank > 0:
            filename = f"{filename}.rank{distributed_rank}"
        PathManager.mkdirs(os.path.dirname(filename))
        fh = logging.StreamHandler(_cached_log_stream(filename))
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(plain_formatter)
        logger.addHandler(fh)
    return logger


@functools.lru_cache(maxsize=None)  # one handle per file, shared by every logger that writes there
def _cached_log_stream(filename: str) -> IO[str]:
    # line buffering: a crash loses at most the line being written, and the file is readable while training runs
    io = PathManager.open(filename, "a", buffering=1)
    atexit.register(io.close)
    return io


# ---------------------------------------------------------------------- rate-limited logging
_LOG_COUNTER: Counter[Hashable] = Counter()
_LOG_TIMER: dict[Hashable, float] = {}
_clock = time.monotonic  # monotonic: a wall-clock jump must not silence or flood the rate-limited logs


def _find_caller() -> tuple[str, tuple[str, int, str]]:
    """Module name and ``(file, line, function)`` of the first frame outside this file."""
    frame = sys._getframe(2)
    this_file = os.path.normcase(__file__)
    while frame is not None:
        code = frame.f_code
        if os.path.normcase(code.co_filename) != this_file:
            mod_name = frame.f_globals.get("__name__", "detlightning")
            if mod_name == "__main__":
                mod_name = "detlightning"
            return mod_name, (code.co_filename, frame.f_lineno, code.co_name)
        frame = frame.f_back
    return "detlightning", ("<unknown>", 0, "<unknown>")


def log_first_n(
    lvl: int, msg: str, n: int = 1, *, name: str | None = None, key: str | tuple[str, ...] = "caller"
) -> None:
    """Log ``msg`` only the first ``n`` times.

    ``key``: what counts as "the same" log: ``"caller"`` (the calling line), ``"message"``, or both as a tuple.
    ``name``: logger name (default: the caller's module).
    """
    if isinstance(key, str):
        key = (key,)
    if not key or any(k not in ("caller", "message") for k in key):
        raise ValueError(f"key must be 'caller', 'message' or a tuple of them, got {key!r}")
    caller_module, caller_key = _find_caller()
    hash_key: tuple[Any, ...] = ()
    if "caller" in key:
        hash_key += caller_key
    if "message" in key:
        hash_key += (msg,)
    _LOG_COUNTER[hash_key] += 1
    if _LOG_COUNTER[hash_key] <= n:
        logging.getLogger(name or caller_module).log(lvl, msg)


def log_every_n(lvl: int, msg: str, n: int = 1, *, name: str | None = None) -> None:
    """Log ``msg`` on the 1st, (n+1)-th, (2n+1)-th ... call from the same line."""
    caller_module, key = _find_caller()
    _LOG_COUNTER[key] += 1
    if n == 1 or _LOG_COUNTER[key] % n == 1:
        logging.getLogger(name or caller_module).log(lvl, msg)


def log_every_n_seconds(lvl: int, msg: str, n: float = 1, *, name: str | None = None) -> None:
    """Log ``msg`` from the same line at most once every ``n`` seconds."""
    caller_module, key = _find_caller()
    last_logged = _LOG_TIMER.get(key)
    now = _clock()
    if last_logged is None or now - last_logged >= n:
        logging.getLogger(name or caller_module).log(lvl, msg)
        _LOG_TIMER[key] = now


def create_small_table(small_dict: dict[str, Any]) -> str:
    """A one-row markdown ("pipe") table: keys as header, values below, floats with 3 decimals."""
    if not small_dict:
        return ""
    keys, values = tuple(zip(*small_dict.items(), strict=True))
    return tabulate(
        [values], headers=keys, tablefmt="pipe", floatfmt=".3f", stralign="center", numalign="center"
    )


def _log_api_usage(identifier: str) -> None:
    """Usage telemetry hook of detectron2; deliberately a no-op here."""
