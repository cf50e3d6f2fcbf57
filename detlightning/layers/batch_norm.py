"""Normalisation layers: FrozenBatchNorm2d and the ``get_norm`` factory used by every configurable block; the
precise-BN statistics (``update_bn_stats``) that the PreciseBN hook and callback share."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CycleBatchNormList",
    "FrozenBatchNorm2d",
    "LayerNorm",
    "NaiveSyncBatchNorm",
    "get_bn_modules",
    "get_norm",
    "update_bn_stats",
]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are fixed buffers.

    All four tensors (``weight``, ``bias``, ``running_mean``, ``running_var``; shape (C,)) are buffers, so they load
    from detectron2 checkpoints under the same names but are never trained. Computes
    ``x * weight / sqrt(running_var + eps) + bias - running_mean * scale`` on (N, C, H, W) input.
    """

    _version = 3

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The equivalent per-channel affine ``(scale, shift)``, each (C,)."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            # F.batch_norm in eval mode has a memory-efficient backward.
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
            )
        scale, shift = self.scale_and_shift()
        out_dtype = x.dtype  # may be half under autocast
        return x * scale.to(out_dtype).view(1, -1, 1, 1) + shift.to(out_dtype).view(1, -1, 1, 1)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            # d2-parity: old checkpoints (and Caffe2 conversions) hold only the folded scale/bias; absent statistics
            # mean "identity", so fill them instead of reporting them missing.
            if prefix + "running_mean" not in state_dict:
                state_dict[prefix + "running_mean"] = torch.zeros_like(self.running_mean)
            if prefix + "running_var" not in state_dict:
                state_dict[prefix + "running_var"] = torch.ones_like(self.running_var)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm2d/SyncBatchNorm in ``module`` (recursively) by a FrozenBatchNorm2d with its state.

        Returns the converted module (a new object when ``module`` itself is a batch norm).
        """
        bn_types = (nn.modules.batchnorm.BatchNorm2d, nn.modules.batchnorm.SyncBatchNorm)
        if isinstance(module, bn_types):
            frozen = cls(module.num_features, eps=module.eps)
            if module.affine:
                frozen.weight.data.copy_(module.weight.detach())
                frozen.bias.data.copy_(module.bias.detach())
            frozen.running_mean.data.copy_(module.running_mean)
            frozen.running_var.data.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module


class NaiveSyncBatchNorm(nn.SyncBatchNorm):
    """Synchronised BatchNorm; ``torch.nn.SyncBatchNorm`` under detectron2's "naiveSyncBN" name and arguments.

    ``nn.SyncBatchNorm`` falls back to plain BatchNorm when no process group is running, so a "SyncBN" config also
    works in single-process CPU tests. It weights each process's statistics by its number of samples and accepts
    empty inputs, which is what detectron2's ``stats_mode="N"`` asks for; ``stats_mode=""`` (equal weights per
    process) is accepted for compatibility and behaves the same.
    """

    def __init__(self, *args: Any, stats_mode: str = "", **kwargs: Any) -> None:
        if stats_mode not in ("", "N"):
            raise ValueError(f"NaiveSyncBatchNorm stats_mode must be '' or 'N', got {stats_mode!r}")
        super().__init__(*args, **kwargs)
        self._stats_mode = stats_mode


def _group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(32, channels)


class LayerNorm(nn.Module):
    """LayerNorm over the channel dimension of an (N, C, H, W) tensor: each pixel's C values are normalised.

    ``nn.LayerNorm`` normalises trailing dimensions; the conv heads of ViTDet need the channels-first variant
    ("LN" in :func:`get_norm`). Parameters ``weight`` / ``bias`` of shape (C,), as in detectron2's checkpoints.
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.normalized_shape = (normalized_shape,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        inv_std = torch.rsqrt(centred.pow(2).mean(dim=1, keepdim=True) + self.eps)
        return centred * inv_std * self.weight[:, None, None] + self.bias[:, None, None]


_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "BN": nn.BatchNorm2d,
    "SyncBN": NaiveSyncBatchNorm,
    "naiveSyncBN": NaiveSyncBatchNorm,
    "nnSyncBN": nn.SyncBatchNorm,
    "FrozenBN": FrozenBatchNorm2d,
    "GN": _group_norm,
    "LN": LayerNorm,
}


def get_norm(norm: str | Callable[[int], nn.Module] | None, out_channels: int) -> nn.Module | None:
    """Build a normalisation layer for ``out_channels`` channels.

    ``norm`` is one of "BN", "SyncBN", "naiveSyncBN", "nnSyncBN", "FrozenBN", "GN" (32 groups), "LN" (channels-first
    :class:`LayerNorm`), "" / None (no norm),
    or a callable taking the channel count.
    """
    if norm is None or norm == "":
        return None
    if isinstance(norm, str):
        if norm not in _NORMS:
            raise ValueError(f"Unknown norm {norm!r}; expected one of {sorted(_NORMS)} or '' for none.")
        norm = _NORMS[norm]
    return norm(out_channels)


class CycleBatchNormList(nn.ModuleList):
    """One BatchNorm per feature level, used in turn on each call, with one shared affine transform.

    RetinaNet's head runs the same convs on every level, whose statistics differ; a shared BN would mix them.
    The list has ``length`` affine-free BNs (keys ``0.running_mean`` ...) plus ``weight`` / ``bias``.
    """

    def __init__(self, length: int, bn_class: Callable[..., nn.Module] = nn.BatchNorm2d, **kwargs: Any) -> None:
        self._affine = kwargs.pop("affine", True)
        super().__init__([bn_class(**kwargs, affine=False) for _ in range(length)])
        if self._affine:
            channels = self[0].num_features
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        self._pos = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ret = self[self._pos](x)
        self._pos = (self._pos + 1) % len(self)
        if self._affine:
            return ret * self.weight.reshape(1, -1, 1, 1) + self.bias.reshape(1, -1, 1, 1)
        return ret

    def extra_repr(self) -> str:
        return f"affine={self._affine}"


# ------------------------------------------------------------------------------------------------- precise BN
def get_bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that are in training mode and keep running statistics: the ones whose
    statistics :func:`update_bn_stats` recomputes (FrozenBatchNorm2d is not a BatchNorm and never listed)."""
    return [
        m for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]


@torch.no_grad()
def update_bn_stats(
    model: nn.Module,
    data_loader: Iterable[Any],
    num_iter: int = 200,
    bn_modules: Sequence[nn.modules.batchnorm._BatchNorm] | None = None,
) -> None:
    """Set ``running_mean`` / ``running_var`` of ``bn_modules`` (default: :func:`get_bn_modules`) to the plain
    average of the batch statistics of ``num_iter`` batches, instead of the exponential moving average that
    training leaves there ("precise BN").

    Each batch goes through ``model(batch)`` in training mode without gradients; whatever the model puts into an
    ``EventStorage`` meanwhile is discarded. Under ``torch.distributed`` the averages are also averaged over the
    processes, so every process must call this. The model's mode and the layers' momenta are restored.
    ``ValueError`` when ``data_loader`` yields fewer than ``num_iter`` batches.
    """
    from ..utils import comm
    from ..utils.events import EventStorage

    bns = list(get_bn_modules(model) if bn_modules is None else bn_modules)
    if not bns or num_iter <= 0:
        return
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    means = [torch.zeros_like(bn.running_mean) for bn in bns]
    variances = [torch.zeros_like(bn.running_var) for bn in bns]
    # a failed run (data exhausted, model error) must not leave one batch's statistics behind
    saved = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bns]
    model.train()
    for bn in bns:
        bn.momentum = 1.0  # running stats := this batch's stats, summed up below
    batches = iter(data_loader)
    try:
        with EventStorage():
            for done in range(num_iter):
                try:
                    batch = next(batches)
                except StopIteration:
                    raise ValueError(
                        f"update_bn_stats needs num_iter={num_iter} batches, the data loader gave only {done}"
                    ) from None
                model(batch)
                for i, bn in enumerate(bns):
                    means[i] += bn.running_mean / num_iter
                    variances[i] += bn.running_var / num_iter
    except BaseException:
        for bn, (mean, var) in zip(bns, saved):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
        raise
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.train(was_training)
    world = comm.get_world_size()
    for bn, mean, var in zip(bns, means, variances):
        if world > 1:
            torch.distributed.all_reduce(mean)
            torch.distributed.all_reduce(var)
            mean, var = mean / world, var / world
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
