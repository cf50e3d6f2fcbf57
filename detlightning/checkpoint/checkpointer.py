"""Generic checkpointing of an ``nn.Module`` plus other checkpointable objects (fvcore's Checkpointer API).

:class:`Checkpointer` saves ``{"model": model.state_dict(), <name>: obj.state_dict(), **extra}`` to
``<save_dir>/<name>.pth`` and records the file name in ``<save_dir>/last_checkpoint``; loading tolerates
partially matching files (missing, unexpected and shape-mismatched keys are logged, never fatal).
:class:`PeriodicCheckpointer` saves every ``period`` iterations and keeps the newest ``max_to_keep`` files.
"""
from __future__ import annotations

import copy
import logging
import os
import pickle
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from ..utils import comm
from .atomic import (
    CheckpointDamagedError,
    atomic_torch_save,
    atomic_write,
    checkpoint_file_problem,
    newest_valid_checkpoint,
    remove_stale_temp_files,
)
from .paths import get_local_path
from .safe_pickle import torch_load, unsafe_pickle_allowed

__all__ = [
    "Checkpointer",
    "CheckpointDamagedError",
    "PeriodicCheckpointer",
    "get_missing_parameters_message",
    "get_unexpected_parameters_message",
]

LAST_CHECKPOINT = "last_checkpoint"


class _IncompatibleKeys(NamedTuple):
    """What did not load: like ``nn.Module.load_state_dict``'s result, plus shape mismatches."""

    missing_keys: list[str]
    unexpected_keys: list[str]
    incorrect_shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (key, checkpoint shape, model shape)


class Checkpointer:
    """Save/load a model together with extra checkpointable objects (optimizer, scheduler, ...).

    Args:
        model: the model; a ``DataParallel``/``DistributedDataParallel`` wrapper is unwrapped.
        save_dir: directory for checkpoints and the ``last_checkpoint`` tag; ``""`` disables saving.
        save_to_disk: if False, :meth:`save` does nothing (e.g. on non-main processes).
        allow_unsafe_pickle: load files with full pickle instead of the restricted loaders; ``None`` reads
            ``$DETLIGHTNING_ALLOW_UNSAFE_PICKLE``. Only for files from a trusted source.
        checkpointables: objects with ``state_dict()``/``load_state_dict()``, saved under their keyword.

    After :meth:`load`, ``incompatible_keys`` holds the ``(missing_keys, unexpected_keys,
    incorrect_shapes)`` of the model load.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: bool = True,
        allow_unsafe_pickle: bool | None = None,
        **checkpointables: Any,
    ) -> None:
        self._wrapped_ddp = isinstance(model, DistributedDataParallel)
        if isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        self.model: nn.Module = model
        self.checkpointables: dict[str, Any] = copy.copy(checkpointables)
        self.logger: logging.Logger = logging.getLogger(__name__)
        self.save_dir = os.fspath(save_dir)
        self.save_to_disk = save_to_disk
        self.allow_unsafe_pickle = allow_unsafe_pickle
        self.incompatible_keys: _IncompatibleKeys | None = None
        self._num_loaded = 0  # model tensors set by the last load, and how many the model has
        self._num_model_tensors = 0
        if self.save_dir and self.save_to_disk and os.path.isdir(self.save_dir):
            remove_stale_temp_files(self.save_dir)  # unfinished saves of a killed earlier run

    @property
    def _unsafe(self) -> bool:
        return unsafe_pickle_allowed(self.allow_unsafe_pickle)

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``<save_dir>/<name>.pth`` with the model, the checkpointables and ``kwargs``; tag it as last."""
        if not self.save_dir or not self.save_to_disk:
            return
        data: dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)

        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"checkpoint name must be a plain file name without directories, got {name!r}")
        os.makedirs(self.save_dir, exist_ok=True)
        self.logger.info("Saving checkpoint to %s", save_file)
        try:
            # temp file in save_dir + fsync + rename: a crash or a full disk never leaves a truncated checkpoint
            atomic_torch_save(data, save_file)
        except OSError as e:
            self.logger.error("Saving checkpoint %s failed (%s); the previous checkpoints are unchanged", save_file, e)
            raise
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Record ``last_filename_basename`` (a file in ``save_dir``) as the checkpoint to resume from."""
        os.makedirs(self.save_dir or ".", exist_ok=True)
        save_file = os.path.join(self.save_dir, LAST_CHECKPOINT)
        atomic_write(save_file, lambda f: f.write(last_filename_basename.encode()))

    # ---------------------------------------------------------- finding files
    def has_checkpoint(self) -> bool:
        """Whether ``save_dir`` has a ``last_checkpoint`` tag."""
        return os.path.exists(os.path.join(self.save_dir, LAST_CHECKPOINT))

    def get_checkpoint_file(self) -> str:
        """Path of the checkpoint named in ``last_checkpoint``, or ``""`` if there is none."""
        try:
            with open(os.path.join(self.save_dir, LAST_CHECKPOINT)) as f:
                last_saved = f.read().strip()
        except OSError:
            # the tag may have been removed by another process in the meantime
            return ""
        return os.path.join(self.save_dir, last_saved)

    def get_all_checkpoint_files(self) -> list[str]:
        """All ``.pth`` files in ``save_dir`` (sorted)."""
        if not os.path.isdir(self.save_dir):
            return []
        return [
            os.path.join(self.save_dir, f)
            for f in sorted(os.listdir(self.save_dir))
            if f.endswith(".pth") and os.path.isfile(os.path.join(self.save_dir, f))
        ]

    # ----------------------------------------------------------------- loading
    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """Resume from ``last_checkpoint`` (model and all checkpointables) if ``resume`` and it exists,
        else load only the model from ``path``.

        A damaged (empty, truncated) last checkpoint is reported by path and the newest intact ``.pth`` in
        ``save_dir`` is resumed from instead."""
        if resume and self.has_checkpoint():
            last = self.get_checkpoint_file()
            found = newest_valid_checkpoint(last, self.get_all_checkpoint_files())
            if found is None:
                raise CheckpointDamagedError(
                    f"cannot resume: {os.path.join(self.save_dir, LAST_CHECKPOINT)} names {last}, which is missing "
                    f"or damaged, and no other intact .pth checkpoint is in {self.save_dir}"
                )
            return self.load(found)
        return self.load(path, checkpointables=[])

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        """Load a checkpoint into the model and the named checkpointables.

        Args:
            path: local path, ``file://``, ``http(s)://``, ``detectron2://`` or ``catalog://``; empty loads nothing.
            checkpointables: names of checkpointables to restore; ``None`` means all of them.

        Returns:
            The checkpoint's remaining entries (e.g. ``iteration`` and whatever :meth:`save` got as extra data).
        """
        if not path:
            self.logger.info("No checkpoint found. Initializing model from scratch")
            return {}
        self.logger.info("Loading checkpoint from %s", path)
        local = path if os.path.isfile(path) else get_local_path(path)
        if not os.path.isfile(local):
            raise FileNotFoundError(f"Checkpoint {path} not found (looked for the file {local})")

        checkpoint = self._read_checkpoint(local)
        incompatible = self._load_model(checkpoint)
        if incompatible is not None:
            self.incompatible_keys = incompatible
            self._log_incompatible_keys(incompatible)
            self._check_load_summary(path, incompatible)

        names = list(self.checkpointables) if checkpointables is None else list(checkpointables)
        for key in names:
            if key not in self.checkpointables:
                raise KeyError(f"no checkpointable named {key!r}; this checkpointer has {sorted(self.checkpointables)}")
            if key in checkpoint:
                self.logger.info("Loading %s from %s", key, path)
                self.checkpointables[key].load_state_dict(checkpoint.pop(key))
        return checkpoint

    def _read_checkpoint(self, local: str) -> dict[str, Any]:
        """:meth:`_load_file`, with empty, truncated and non-checkpoint files reported as damaged by path."""
        is_pickle = local.endswith(".pkl")
        problem = _empty_file_problem(local) if is_pickle else checkpoint_file_problem(local)
        if problem is not None:
            raise CheckpointDamagedError(f"Checkpoint file {local} is damaged: {problem}")
        try:
            return self._load_file(local)
        except (EOFError, UnicodeDecodeError, zipfile.BadZipFile, pickle.UnpicklingError, RuntimeError) as e:
            refused = isinstance(e, pickle.UnpicklingError) and str(e).startswith("Refusing")  # unsafe, not damaged
            unreadable = not isinstance(e, RuntimeError) or "PytorchStreamReader" in str(e) or "zip archive" in str(e)
            if refused or not unreadable:
                raise
            raise CheckpointDamagedError(
                f"Checkpoint file {local} is damaged (truncated or not a checkpoint): {type(e).__name__}: {e}"
            ) from e

    def _load_file(self, f: str) -> dict[str, Any]:
        """Read a local checkpoint file into a dict with (at least) a ``"model"`` state dict."""
        return torch_load(f, allow_unsafe=self._unsafe)

    def _load_model(self, checkpoint: dict[str, Any]) -> _IncompatibleKeys:
        """Load ``checkpoint["model"]`` (popped) into the model, skipping shape mismatches."""
        state_dict = checkpoint.pop("model")
        _convert_ndarray_to_tensor(state_dict, self.logger)
        # checkpoints written from a (Distributed)DataParallel-wrapped model carry its "module." prefix
        _strip_prefix_if_present(state_dict, "module.")

        model_state_dict = self.model.state_dict()
        incorrect_shapes = []
        for k in list(state_dict.keys()):
            if k not in model_state_dict:
                continue
            model_param = model_state_dict[k]
            if isinstance(model_param, nn.parameter.UninitializedParameter):
                continue  # lazy modules take their shape from the checkpoint
            shape_model = tuple(model_param.shape)
            shape_ckpt = tuple(state_dict[k].shape)
            if shape_model != shape_ckpt:
                incorrect_shapes.append((k, shape_ckpt, shape_model))
                state_dict.pop(k)
        self._num_model_tensors = len(model_state_dict)
        self._num_loaded = sum(1 for k in state_dict if k in model_state_dict)
        result = self.model.load_state_dict(state_dict, strict=False)
        return _IncompatibleKeys(list(result.missing_keys), list(result.unexpected_keys), incorrect_shapes)

    def _log_incompatible_keys(self, incompatible: _IncompatibleKeys) -> None:
        for k, shape_ckpt, shape_model in incompatible.incorrect_shapes:
            self.logger.warning(
                "Skip loading parameter '%s' to the model due to incompatible shapes: %s in the checkpoint "
                "but %s in the model! You might want to double check if this is expected.",
                k, shape_ckpt, shape_model,
            )
        if incompatible.missing_keys:
            missing = _filter_reused_missing_keys(self.model, incompatible.missing_keys)
            if missing:
                self.logger.info(get_missing_parameters_message(missing))
        if incompatible.unexpected_keys:
            self.logger.info(get_unexpected_parameters_message(incompatible.unexpected_keys))

    def _check_load_summary(self, path: str, incompatible: _IncompatibleKeys) -> None:
        """WARNING with the counts when anything did not match; an error when nothing did."""
        total, loaded = self._num_model_tensors, self._num_loaded
        missing = _filter_reused_missing_keys(self.model, incompatible.missing_keys)
        n_missing, n_unexpected = len(missing), len(incompatible.unexpected_keys)
        n_shapes = len(incompatible.incorrect_shapes)
        if total > 0 and loaded == 0:
            model_keys = sorted(self.model.state_dict())[:3]
            other = sorted(incompatible.unexpected_keys)[:3]
            raise ValueError(
                f"Checkpoint {path} matches none of the model's {total} tensors: is it a checkpoint of another "
                f"architecture? Model keys look like {model_keys}; the checkpoint has {n_unexpected} unused keys "
                f"like {other}" + (f" and {n_shapes} keys of other shapes" if n_shapes else "")
            )
        if n_missing or n_unexpected or n_shapes:
            self.logger.warning(
                "Loaded %d of %d tensors from %s; %d missing, %d unexpected%s",
                loaded, total, path, n_missing, n_unexpected,
                f", {n_shapes} skipped for their shape" if n_shapes else "",
            )


class PeriodicCheckpointer:
    """Call ``checkpointer.save`` every ``period`` iterations and at the last one.

    ``step(iteration)`` saves ``{file_prefix}_{iteration:07d}`` when ``(iteration + 1) % period == 0`` and
    ``{file_prefix}_final`` when ``iteration >= max_iter - 1``; with ``max_to_keep`` only the newest periodic
    files are kept (the final one is never deleted).
    """

    def __init__(
        self,
        checkpointer: Checkpointer,
        period: int,
        max_iter: int | None = None,
        max_to_keep: int | None = None,
        file_prefix: str = "model",
    ) -> None:
        if int(period) <= 0:
            raise ValueError(f"period must be a positive number of iterations, got {period}")
        if max_to_keep is not None and max_to_keep <= 0:
            raise ValueError(f"max_to_keep must be positive or None, got {max_to_keep}")
        self.checkpointer = checkpointer
        self.period = int(period)
        self.max_iter = max_iter
        self.max_to_keep = max_to_keep
        self.recent_checkpoints: list[str] = []
        self.file_prefix = file_prefix

    def step(self, iteration: int, **kwargs: Any) -> None:
        """Save if ``iteration`` (0-based) is due; ``kwargs`` are saved along with ``iteration``."""
        iteration = int(iteration)
        additional_state = {"iteration": iteration, **kwargs}
        if (iteration + 1) % self.period == 0:
            self.checkpointer.save(f"{self.file_prefix}_{iteration:07d}", **additional_state)
            if self.max_to_keep is not None:
                self.recent_checkpoints.append(self.checkpointer.get_checkpoint_file())
                if len(self.recent_checkpoints) > self.max_to_keep:
                    old = self.recent_checkpoints.pop(0)
                    # only the process that writes files deletes them (ranks may share a file system)
                    if self.checkpointer.save_to_disk and not old.endswith(f"{self.file_prefix}_final.pth"):
                        try:
                            os.remove(old)
                        except FileNotFoundError:
                            pass
        if self.max_iter is not None and iteration >= self.max_iter - 1:
            self.checkpointer.save(f"{self.file_prefix}_final", **additional_state)

    def save(self, name: str, **kwargs: Any) -> None:
        """Save outside the schedule (same arguments as :meth:`Checkpointer.save`)."""
        self.checkpointer.save(name, **kwargs)


# ------------------------------------------------------------------------------------------ helpers
def _convert_ndarray_to_tensor(state_dict: dict[str, Any], logger: logging.Logger | None = None) -> None:
    """In place: numpy arrays/scalars -> tensors; entries that are neither are dropped with a warning."""
    for k in list(state_dict.keys()):
        v = state_dict[k]
        if isinstance(v, torch.Tensor):
            continue
        if isinstance(v, (np.ndarray, np.generic)) and v.dtype != object:
            state_dict[k] = torch.as_tensor(np.array(v))  # copy: pickled arrays may be read-only
            continue
        (logger or logging.getLogger(__name__)).warning(
            "Ignoring checkpoint entry %r of unsupported type %s (expected a tensor or numpy array)",
            k, type(v).__name__,
        )
        del state_dict[k]


def _empty_file_problem(path: str) -> str | None:
    try:
        return "the file is empty (0 bytes)" if os.path.getsize(path) == 0 else None
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"


def _strip_prefix_if_present(state_dict: dict[str, Any], prefix: str) -> None:
    """In place: drop ``prefix`` from every key, but only if all keys carry it (also in ``_metadata``)."""
    keys = sorted(state_dict.keys())
    if not keys or not all(len(k) == 0 or k.startswith(prefix) for k in keys):
        return
    for k in keys:
        state_dict[k[len(prefix) :]] = state_dict.pop(k)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for k in list(metadata.keys()):
            if k:  # "" is the wrapper itself
                metadata[k[len(prefix) :] if k.startswith(prefix) else k] = metadata.pop(k)


def _filter_reused_missing_keys(model: nn.Module, keys: list[str]) -> list[str]:
    """Drop "missing" keys whose tensor was loaded under another name (a module shared by two parents)."""
    keyset = set(keys)
    names_of: dict[int, set[str]] = defaultdict(set)
    for prefix, module in model.named_modules(remove_duplicate=False):
        members = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for name, tensor in members:
            if tensor is not None:
                names_of[id(tensor)].add(f"{prefix}.{name}" if prefix else name)
    for names in names_of.values():
        if any(n in keyset for n in names) and not all(n in keyset for n in names):
            keyset -= names
    return [k for k in keys if k in keyset]


def _group_checkpoint_keys(keys: Iterable[str]) -> list[str]:
    """Compact, readable lines for a list of state-dict keys.

    Keys are grouped by module (``a.b.{bias, weight}``), then sibling modules with the same leaf names
    are merged: ``roi_heads.box_predictor.{bbox_pred, cls_score}.{bias, weight}``.
    """
    leaves: dict[str, list[str]] = {}
    for key in keys:
        head, sep, tail = key.rpartition(".")
        if sep:
            leaves.setdefault(head, []).append(tail)
        else:
            leaves.setdefault(key, [])
    merged: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for head, tails in leaves.items():
        parent, sep, child = head.rpartition(".")
        if not tails:  # a top-level key such as "pixel_mean": keep it on its own line
            merged[(head, ())] = []
            continue
        merged.setdefault((parent if sep else "", tuple(sorted(set(tails)))), []).append(child if sep else head)
    lines = []
    for (parent, tails), children in merged.items():
        if not tails:
            lines.append(parent)
            continue
        kids = sorted(set(children))
        line = (parent + "." if parent else "") + (kids[0] if len(kids) == 1 else "{" + ", ".join(kids) + "}")
        line += "." + tails[0] if len(tails) == 1 else ".{" + ", ".join(tails) + "}"
        lines.append(line)
    return lines


def get_missing_parameters_message(keys: list[str]) -> str:
    """Log text for model keys that the checkpoint did not provide, grouped by common prefix."""
    return "Some model parameters or buffers are not found in the checkpoint:\n" + "\n".join(
        "  " + line for line in _group_checkpoint_keys(keys)
    )


def get_unexpected_parameters_message(keys: Iterable[str]) -> str:
    """Log text for checkpoint keys that the model does not use, grouped by common prefix."""
    return "The checkpoint state_dict contains keys that are not used by the model:\n" + "\n".join(
        "  " + line for line in _group_checkpoint_keys(keys)
    )


def _broadcast_model_from_main(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (in place)."""
    for tensor in model.state_dict().values():
        if isinstance(tensor, torch.Tensor):
            dist.broadcast(tensor, src=0)


def _gather_flags(flag: bool) -> list[bool]:
    flags: list[Any] = [None] * comm.get_world_size()
    dist.all_gather_object(flags, flag)
    return [bool(f) for f in flags]


def _as_mapping(obj: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise TypeError(f"{what}: expected a dict, got {type(obj).__name__}")
    return obj
