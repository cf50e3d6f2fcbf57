"""Optional fast COCO evaluation backed by the ``faster-coco-eval`` package (a C++ ``evaluateImg``/``accumulate``).

detectron2 ships its own C++ ``COCOeval_opt``; here the same role is played by ``faster_coco_eval`` when it is
installed (``pip install faster-coco-eval``). Without it ``COCOeval_opt`` *is* pycocotools' ``COCOeval`` and
``FAST_COCOEVAL_AVAILABLE`` is False, exactly like detectron2 without its compiled extension.

The two backends need their own ``COCO`` objects (faster-coco-eval indexes annotations differently), so code that
may use either creates them with ``make_coco_api`` / converts them with ``as_coco_api``.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
from typing import Any

from pycocotools.coco import COCO as _PyCOCO  # noqa: N811  (kept apart from faster_coco_eval's COCO)
from pycocotools.cocoeval import COCOeval as _PyCOCOeval

__all__ = [
    "COCOeval_opt",
    "FAST_COCOEVAL_AVAILABLE",
    "as_coco_api",
    "is_fast_coco_api",
    "is_fast_cocoeval",
    "make_coco_api",
]

try:  # optional dependency
    from faster_coco_eval import COCO as _FastCOCO  # noqa: N811
    from faster_coco_eval import COCOeval_faster as _FastCOCOeval
except ImportError:  # pragma: no cover - exercised only where faster-coco-eval is missing
    _FastCOCO = None
    _FastCOCOeval = None

FAST_COCOEVAL_AVAILABLE: bool = _FastCOCOeval is not None


if _FastCOCOeval is not None:

    class COCOeval_opt(_FastCOCOeval):  # noqa: N801 (detectron2's name)
        """pycocotools' ``COCOeval`` interface (``params``, ``evaluate/accumulate/summarize``, ``stats``,
        ``eval["precision"]``) computed by faster-coco-eval; needs ``COCO`` objects from ``make_coco_api(...,
        fast=True)``.

        With custom ``params.maxDets = [1, 10, N]``, AP and AR@N use N (what detectron2's ``COCOevalMaxDets``
        does for pycocotools).
        """

        def __init__(
            self, cocoGt: Any = None, cocoDt: Any = None, iouType: str = "segm", **kwargs: Any  # noqa: N803  (COCOeval's names)
        ) -> None:
            # pycocotools prints its progress and summary to stdout; keep the same output
            kwargs.setdefault("print_function", print)
            super().__init__(cocoGt, cocoDt, iouType, **kwargs)
            if cocoGt is not None:
                # pycocotools evaluates every category of the ground truth; faster-coco-eval restricts keypoint
                # evaluation to categories that have annotations, which changes eval["precision"]'s K axis
                self.params.catIds = sorted(cocoGt.getCatIds())

else:  # pragma: no cover
    COCOeval_opt = _PyCOCOeval  # type: ignore[misc,assignment]  # d2-parity: falls back to the official API


def is_fast_coco_api(coco: Any) -> bool:
    """Whether ``coco`` is a faster-coco-eval ``COCO`` (as ``COCOeval_opt`` needs)."""
    return _FastCOCO is not None and isinstance(coco, _FastCOCO)


def is_fast_cocoeval(cocoeval_fn: Any) -> bool:
    """Whether ``cocoeval_fn`` (a COCOeval class) is faster-coco-eval based, i.e. needs ``make_coco_api(...,
    fast=True)`` objects."""
    return _FastCOCOeval is not None and isinstance(cocoeval_fn, type) and issubclass(cocoeval_fn, _FastCOCOeval)


def make_coco_api(annotations: str | os.PathLike | dict[str, Any], fast: bool) -> Any:
    """A ``COCO`` index of ``annotations`` (a json path or a COCO-format dict) for the chosen backend.

    ``fast=True`` needs faster-coco-eval (``ImportError`` otherwise). A dict is not copied by pycocotools; pass a
    copy if it is shared.
    """
    if fast:
        if _FastCOCO is None:
            raise ImportError("fast COCO evaluation needs the optional package faster-coco-eval "
                              "(pip install faster-coco-eval)")
        return _FastCOCO(os.fspath(annotations) if isinstance(annotations, os.PathLike) else annotations)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "loading annotations..."
        if isinstance(annotations, dict):
            coco = _PyCOCO()
            coco.dataset = annotations
            coco.createIndex()
            return coco
        return _PyCOCO(os.fspath(annotations))


def as_coco_api(coco: Any, fast: bool) -> Any:
    """``coco`` itself when it already belongs to the chosen backend, else a new index of a copy of its dataset."""
    if is_fast_coco_api(coco) == fast:
        return coco
    # both backends add evaluation bookkeeping ("ignore", "rle") to the annotation dicts: do not share them
    return make_coco_api(copy.deepcopy(coco.dataset), fast)
