"""Comparing an exported model's outputs with the eager model's."""
from __future__ import annotations

import torch

from detlightning.structures import Instances

TOL = 1e-4


def _tensor(x) -> torch.Tensor:
    return x.tensor if hasattr(x, "tensor") else x


def assert_instances_close(
    eager: Instances, exported: Instances, tol: float = TOL, max_mask_disagreement: float = 0.0
) -> dict[str, float]:
    """Same detections in the same order: float fields within ``tol``, integer fields equal, boolean (pasted)
    masks disagreeing on at most ``max_mask_disagreement`` of their pixels. Returns the max differences."""
    assert tuple(int(s) for s in exported.image_size) == tuple(int(s) for s in eager.image_size)
    assert sorted(exported.get_fields()) == sorted(eager.get_fields())
    assert len(exported) == len(eager), f"{len(exported)} exported detections vs {len(eager)} eager"
    diffs: dict[str, float] = {}
    for name, value in eager.get_fields().items():
        a, b = _tensor(value), _tensor(exported.get(name))
        assert a.shape == b.shape, f"{name}: shape {tuple(b.shape)} vs eager {tuple(a.shape)}"
        assert a.dtype == b.dtype, f"{name}: dtype {b.dtype} vs eager {a.dtype}"
        if a.numel() == 0:
            diffs[name] = 0.0
        elif a.dtype == torch.bool:
            diffs[name] = float((a != b).float().mean())
            assert diffs[name] <= max_mask_disagreement, f"{name}: {diffs[name]:.2e} of the pixels differ"
        elif a.dtype.is_floating_point:
            diffs[name] = float((a - b).abs().max())
            assert diffs[name] <= tol, f"{name}: max abs difference {diffs[name]:.3g} > {tol}"
        else:
            diffs[name] = float((a != b).sum())
            assert torch.equal(a, b), f"{name}: {int(diffs[name])} entries differ"
    return diffs
