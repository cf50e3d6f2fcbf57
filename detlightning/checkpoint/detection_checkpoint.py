"""DetectionCheckpointer: loads detectron2, model-zoo, Caffe2/Detectron1 and Lightning checkpoints.

File forms understood by :meth:`DetectionCheckpointer.load`:

* detectron2 ``.pth``: ``{"model": state_dict, "iteration": ..., ...}`` or a bare state dict. Append
  ``?matching_heuristics=True`` to the path to match its keys by suffix (as for ``.pkl`` files).
* detectron2 model-zoo ``.pkl``: ``{"model": {name: ndarray}, "__author__": ..., "matching_heuristics": bool}``.
* Caffe2 / Detectron1 ``.pkl``: a dict of numpy blobs (ImageNet backbones) or ``{"blobs": {...}}``
  (detection models); names are converted (``res2_0_branch2a_w`` -> ``res2.0.conv1.weight``) and matched
  to the model's keys by suffix; ``*_momentum`` blobs are dropped.
* Lightning ``.ckpt``: ``{"state_dict": {"model.<key>": ...}, ...}``; the LightningModule's ``model.``
  prefix is stripped.
* pycls ``.pyth``: ``{"model_state": ...}``.
"""
from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import parse_qs, urlparse

import torch

from ..utils import comm
from .c2_model_loading import align_and_update_state_dicts
from .checkpointer import (
    Checkpointer,
    _as_mapping,
    _broadcast_model_from_main,
    _convert_ndarray_to_tensor,
    _gather_flags,
    _IncompatibleKeys,
)
from .lightning import is_lightning_checkpoint, state_dict_from_lightning_ckpt
from .paths import get_local_path
from .safe_pickle import load_pickle, torch_load

__all__ = ["DetectionCheckpointer"]

logger = logging.getLogger(__name__)

_FROZEN_BN_DEFAULT_EPS = 1e-5


class DetectionCheckpointer(Checkpointer):
    """:class:`Checkpointer` that also reads detectron2/Detectron1 model-zoo files and Lightning checkpoints.

    Args:
        model: any ``nn.Module`` with detectron2 parameter names.
        save_dir: where :meth:`save` writes ``<name>.pth`` and ``last_checkpoint``.
        save_to_disk: default: only the main process (rank 0) writes files.
        allow_unsafe_pickle: see :class:`Checkpointer`.
        lightning_prefix: attribute path of the model inside the LightningModule of ``.ckpt`` files.
        checkpointables: e.g. ``optimizer=opt, scheduler=sched``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: bool | None = None,
        allow_unsafe_pickle: bool | None = None,
        lightning_prefix: str = "model.",
        **checkpointables: Any,
    ) -> None:
        super().__init__(
            model,
            save_dir,
            save_to_disk=comm.is_main_process() if save_to_disk is None else save_to_disk,
            allow_unsafe_pickle=allow_unsafe_pickle,
            **checkpointables,
        )
        self.lightning_prefix = lightning_prefix
        self._url_queries: dict[str, list[str]] = {}

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        """See :meth:`Checkpointer.load`; also accepts a ``?matching_heuristics=True`` query on the path.

        With a ``DistributedDataParallel`` model this must run on every rank: ranks that cannot read the
        file receive rank 0's weights.
        """
        self._url_queries = {}
        if path and not os.path.isfile(path):
            parsed = urlparse(path)
            if parsed.query:
                self._url_queries = parse_qs(parsed.query)
                path = parsed._replace(query="").geturl()
                unknown = set(self._url_queries) - {"matching_heuristics"}
                if unknown:
                    raise ValueError(
                        f"unsupported query {sorted(unknown)} in checkpoint path {path!r}; "
                        "only 'matching_heuristics' is understood"
                    )

        need_sync = False
        if path and self._wrapped_ddp and comm.get_world_size() > 1:
            local = get_local_path(path)
            has_file = os.path.isfile(local)
            all_have = _gather_flags(has_file)
            if not all_have[0]:
                raise FileNotFoundError(f"Checkpoint {local} not found on the main worker (rank 0).")
            if not all(all_have):
                self.logger.warning("Not all workers can read checkpoint %s; copying rank 0's weights.", local)
                need_sync = True
            if not has_file:
                path = ""  # this rank gets the weights from rank 0 below
        try:
            ret = super().load(path, checkpointables)
        finally:
            self._url_queries = {}
        if need_sync:
            self.logger.info("Broadcasting model states from main worker ...")
            _broadcast_model_from_main(self.model)
        return ret

    # ----------------------------------------------------------------------------- reading files
    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.endswith(".pkl"):
            return self._load_pkl(filename)
        if filename.endswith(".pyth"):
            # pycls (the only user of ".pyth") keeps the weights under "model_state"
            data = _as_mapping(torch_load(filename, allow_unsafe=self._unsafe), filename)
            if "model_state" not in data:
                raise KeyError(f"Cannot load .pyth file {filename}; pycls checkpoints must contain 'model_state'.")
            state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}

        loaded = torch_load(filename, allow_unsafe=self._unsafe)
        if is_lightning_checkpoint(loaded):
            rest = {k: v for k, v in loaded.items() if k != "state_dict"}
            return {"model": state_dict_from_lightning_ckpt(loaded, self.lightning_prefix), **rest}
        loaded = dict(_as_mapping(loaded, filename))
        if "model" not in loaded:
            loaded = {"model": loaded}  # a bare state dict
        if self._url_queries.get("matching_heuristics", ["False"]) == ["True"]:
            loaded["matching_heuristics"] = True
        return loaded

    def _load_pkl(self, filename: str) -> dict[str, Any]:
        data = _as_mapping(load_pickle(filename, allow_unsafe=self._unsafe), filename)
        if "model" in data and "__author__" in data:
            self.logger.info("Reading a file from '%s'", data["__author__"])
            return dict(data)
        # otherwise a Caffe2 / Detectron1 file: detection models nest their weights under "blobs"
        if "blobs" in data:
            data = _as_mapping(data["blobs"], f"{filename}['blobs']")
        # optimizer state of the Caffe2 trainer, meaningless here
        blobs = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}

    # ------------------------------------------------------------------------- loading weights
    def _load_model(self, checkpoint: dict[str, Any]) -> _IncompatibleKeys:
        if checkpoint.get("matching_heuristics", False):
            _convert_ndarray_to_tensor(checkpoint["model"], self.logger)
            is_c2 = checkpoint.get("__author__", None) == "Caffe2"
            model_state_dict = self.model.state_dict()
            aligned = align_and_update_state_dicts(model_state_dict, checkpoint["model"], c2_conversion=is_c2)
            if is_c2:
                self._add_folded_bn_statistics(aligned, model_state_dict)
            checkpoint["model"] = aligned
        incompatible = super()._load_model(checkpoint)

        model_buffers = dict(self.model.named_buffers(recurse=False))
        for k in ("pixel_mean", "pixel_std"):
            # d2-parity: old checkpoints lack these; the model already holds the configured values
            if k in model_buffers and k in incompatible.missing_keys:
                incompatible.missing_keys.remove(k)
        for k in list(incompatible.unexpected_keys):
            # d2-parity: old checkpoints stored cell anchors, which are non-persistent buffers now
            if "anchor_generator.cell_anchors" in k:
                incompatible.unexpected_keys.remove(k)
        return incompatible

    def _add_folded_bn_statistics(self, aligned: dict[str, Any], model_state_dict: dict[str, Any]) -> None:
        """Give every batch-norm layer loaded from a Caffe2 file identity statistics.

        Caffe2 ImageNet files fold the BN statistics into scale (``*_bn_s``) and bias (``*_bn_b``), so the
        layer must compute exactly ``x * scale + bias``. detectron2 leaves ``running_var = 1`` there, which
        scales by ``1/sqrt(1 + eps)``; we set ``running_mean = 0`` and ``running_var = 1 - eps`` so that
        ``(x - running_mean) / sqrt(running_var + eps) * weight + bias`` equals the folded affine.
        """
        modules = dict(self.model.named_modules())
        filled = 0
        for key in list(aligned):
            if not key.endswith(".weight"):
                continue
            prefix = key[: -len("weight")]
            rm_key, rv_key = prefix + "running_mean", prefix + "running_var"
            if (
                prefix + "bias" not in aligned
                or rm_key not in model_state_dict
                or rv_key not in model_state_dict
                or rm_key in aligned
                or rv_key in aligned
            ):
                continue
            eps = float(getattr(modules.get(prefix[:-1]), "eps", _FROZEN_BN_DEFAULT_EPS))
            rm, rv = model_state_dict[rm_key], model_state_dict[rv_key]
            aligned[rm_key] = torch.zeros(rm.shape, dtype=rm.dtype)
            aligned[rv_key] = torch.full(rv.shape, 1.0 - eps, dtype=rv.dtype)
            filled += 1
        if filled:
            self.logger.info(
                "Set running_mean=0, running_var=1-eps for %d norm layers with folded Caffe2 scale/bias", filled
            )
