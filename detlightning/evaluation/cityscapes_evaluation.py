"""Cityscapes evaluation through the official ``cityscapesscripts`` evaluation scripts (detectron2's
``CityscapesInstanceEvaluator`` / ``CityscapesSemSegEvaluator``).

Predictions are written in the scripts' result format to a temporary folder, then the scripts' own
``evaluateImgLists`` scores them against the ground truth of the dataset's ``gt_dir`` (metadata), so the numbers are
cityscapesscripts' numbers. Single machine only: every rank writes into rank 0's temporary folder.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.catalog import MetadataCatalog
from ..utils import comm
from ..utils.file_io import PathManager
from .evaluator import DatasetEvaluator

__all__ = ["CityscapesEvaluator", "CityscapesInstanceEvaluator", "CityscapesSemSegEvaluator"]


def _import_cityscapes(module: str) -> ModuleType:
    try:
        import importlib

        return importlib.import_module(f"cityscapesscripts.{module}")
    except ImportError as e:
        raise ImportError("Cityscapes evaluation needs the cityscapesscripts package: pip install cityscapesscripts"
                          ) from e


def _numpy_for_scripts() -> ModuleType:
    """numpy as cityscapesscripts 2.3 calls it: ``np.in1d`` (removed in numpy 2.4) is ``np.isin`` on the flattened
    input. Handed to the scripts' module only; numpy itself is left alone."""
    if hasattr(np, "in1d"):
        return np
    shim = ModuleType("numpy")
    shim.__getattr__ = lambda name: getattr(np, name)  # type: ignore[method-assign]  # PEP 562
    shim.in1d = lambda ar1, ar2, assume_unique=False, invert=False: np.isin(  # type: ignore[attr-defined]
        np.ravel(ar1), ar2, assume_unique=assume_unique, invert=invert)
    return shim


def _write_json(data: Any, path: str) -> None:
    """cityscapesscripts' ``writeDict2JSON``, also for the numpy scalars its results hold under numpy 2."""
    with open(path, "w") as f:
        json.dump(data, f, default=lambda o: o.item() if isinstance(o, np.generic) else o.__dict__, sort_keys=True,
                  indent=4)


@contextmanager
def _script_run(script: ModuleType, workdir: str, **overrides: Any) -> Iterator[None]:
    """Run a cityscapesscripts evaluation inside ``workdir`` (it writes stray files such as ``matches.json`` into
    the current directory) with its module-level ``args`` overridden, and with numpy and its json writer working on
    numpy 2.4 (see :func:`_numpy_for_scripts`, :func:`_write_json`), restoring all afterwards. The scripts exit the
    process on errors; that becomes a RuntimeError."""
    saved = {k: getattr(script.args, k, None) for k in overrides}
    patches = {"np": _numpy_for_scripts(), "writeDict2JSON": _write_json}
    saved_module = {k: getattr(script, k) for k in patches if hasattr(script, k)}
    cwd = os.getcwd()
    for k, v in overrides.items():
        setattr(script.args, k, v)
    for k in saved_module:
        setattr(script, k, patches[k])
    os.chdir(workdir)
    try:
        yield
    except SystemExit as e:
        raise RuntimeError(f"{script.__name__} failed (exit status {e.code}); its ERROR line is printed above") from e
    finally:
        os.chdir(cwd)
        for k, v in saved_module.items():
            setattr(script, k, v)
        for k, v in saved.items():
            setattr(script.args, k, v)


class CityscapesEvaluator(DatasetEvaluator):
    """Base class: a per-evaluation temporary folder shared by all ranks, and the dataset's metadata (which must
    have ``gt_dir``, and ``thing_classes`` for instances)."""

    def __init__(self, dataset_name: str) -> None:
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        self._cpu_device = torch.device("cpu")
        self._logger = logging.getLogger(__name__)
        self._working_dir: tempfile.TemporaryDirectory[str] | None = None

    def reset(self) -> None:
        if self._working_dir is not None:
            self._working_dir.cleanup()
        self._working_dir = tempfile.TemporaryDirectory(prefix="cityscapes_eval_")
        # every rank writes into rank 0's folder (which is why this does not work across machines)
        self._temp_dir: str = comm.all_gather(self._working_dir.name)[0]
        if self._temp_dir != self._working_dir.name:
            self._working_dir.cleanup()
            self._working_dir = None
        self._logger.info("Writing cityscapes results to temporary directory %s ...", self._temp_dir)

    def _ground_truth(self, pattern: str) -> list[str]:
        gt_dir = self._metadata.get("gt_dir")
        if gt_dir is None:
            raise KeyError(f"{type(self).__name__}: metadata of '{self._dataset_name}' has no 'gt_dir'")
        files = sorted(glob.glob(os.path.join(PathManager.get_local_path(gt_dir), "*", pattern)))
        if not files:
            raise FileNotFoundError(f"{type(self).__name__}: no ground truth {gt_dir}/*/{pattern} to evaluate on")
        return files

    def _run(self, module: str, gt_pattern: str, get_prediction: Callable[[ModuleType, str], str],
             **overrides: Any) -> dict[str, Any]:
        """Score the files in the temporary folder with the cityscapesscripts evaluation ``module``."""
        script = _import_cityscapes(module)
        gt_files = self._ground_truth(gt_pattern)
        self._logger.info("Evaluating results under %s ...", self._temp_dir)
        with _script_run(script, self._temp_dir, predictionPath=os.path.abspath(self._temp_dir),
                         predictionWalk=None, JSONOutput=False, colorized=False, **overrides):
            predictions = [get_prediction(script, gt) for gt in gt_files]
            results = script.evaluateImgLists(predictions, gt_files, script.args)
        if self._working_dir is not None:
            self._working_dir.cleanup()
            self._working_dir = None
        return results


class CityscapesInstanceEvaluator(CityscapesEvaluator):
    """Instance segmentation AP / AP50 (in percent) by cityscapesscripts' ``evalInstanceLevelSemanticLabeling``.

    For every image it writes ``<image>_pred.txt`` listing one ``<mask png> <label id> <score>`` line per predicted
    instance (the class's Cityscapes label id looked up by its ``thing_classes`` name).
    """

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        name2label = _import_cityscapes("helpers.labels").name2label
        thing_classes = self._metadata.thing_classes
        for input, output in zip(inputs, outputs):
            stem = os.path.splitext(os.path.basename(input["file_name"]))[0]
            lines = []
            if "instances" in output:  # an image without predictions still needs its (empty) txt file
                instances = output["instances"].to(self._cpu_device)
                masks = instances.pred_masks.numpy().astype(np.uint8) * 255
                for i, (cls, score) in enumerate(zip(instances.pred_classes.tolist(), instances.scores.tolist())):
                    class_name = thing_classes[cls]
                    png_name = f"{stem}_{i}_{class_name}.png"
                    Image.fromarray(masks[i]).save(os.path.join(self._temp_dir, png_name))
                    lines.append(f"{png_name} {name2label[class_name].id} {score}\n")
            with open(os.path.join(self._temp_dir, stem + "_pred.txt"), "w") as f:
                f.writelines(lines)

    def evaluate(self) -> OrderedDict[str, dict[str, float]] | None:
        """``{"segm": {"AP", "AP50"}}`` on rank 0, None elsewhere."""
        comm.synchronize()
        if comm.get_rank() > 0:
            return None
        results = self._run(
            "evaluation.evalInstanceLevelSemanticLabeling",
            "*_gtFine_instanceIds.png",
            lambda script, gt: script.getPrediction(gt, script.args),
            gtInstancesFile=os.path.join(self._temp_dir, "gtInstances.json"),
        )["averages"]
        return OrderedDict(segm={"AP": float(results["allAp"] * 100), "AP50": float(results["allAp50%"] * 100)})


class CityscapesSemSegEvaluator(CityscapesEvaluator):
    """Semantic segmentation IoU / iIoU over classes and categories ("_sup"), in percent, by
    ``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling``.

    The argmax over the model's ``sem_seg`` scores (train ids) is written as ``<image>_pred.png`` in label ids;
    train ids of classes not evaluated become 255.
    """

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        train_id_to_id = np.full(256, 255, dtype=np.uint8)
        for train_id, label in _import_cityscapes("helpers.labels").trainId2label.items():
            if not label.ignoreInEval and 0 <= train_id < 256:
                train_id_to_id[train_id] = label.id
        for input, output in zip(inputs, outputs):
            stem = os.path.splitext(os.path.basename(input["file_name"]))[0]
            pred = output["sem_seg"].argmax(dim=0).to(self._cpu_device).numpy()
            Image.fromarray(train_id_to_id[np.minimum(pred, 255)]).save(
                os.path.join(self._temp_dir, stem + "_pred.png")
            )

    def evaluate(self) -> OrderedDict[str, dict[str, float]] | None:
        """``{"sem_seg": {"IoU", "iIoU", "IoU_sup", "iIoU_sup"}}`` on rank 0, None elsewhere."""
        comm.synchronize()
        if comm.get_rank() > 0:
            return None
        results = self._run(
            "evaluation.evalPixelLevelSemanticLabeling",
            "*_gtFine_labelIds.png",
            lambda script, gt: script.getPrediction(script.args, gt),
        )
        keys = {"IoU": "averageScoreClasses", "iIoU": "averageScoreInstClasses", "IoU_sup": "averageScoreCategories",
                "iIoU_sup": "averageScoreInstCategories"}
        return OrderedDict(sem_seg={k: float(100.0 * results[v]) for k, v in keys.items()})
