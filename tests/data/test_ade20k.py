"""ADE20K sem-seg registration (ade20k_sem_seg_{train,val}) on a tiny ADEChallengeData2016 folder: jpg images and
the annotations_detectron2 label maps (classes 0..149, 255 ignored)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detlightning.data import DatasetCatalog, MetadataCatalog
from detlightning.data.datasets.ade20k import ADE20K_SEM_SEG_CATEGORIES, register_all_ade20k
from detlightning.data.datasets.builtin import datasets_root
from detlightning.evaluation import SemSegEvaluator, build_evaluator

NAMES = ("ade20k_sem_seg_train", "ade20k_sem_seg_val")


def _write_ade(root: Path) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    labels: dict[str, list[np.ndarray]] = {}
    for folder, prefix, n in (("training", "ADE_train", 3), ("validation", "ADE_val", 2)):
        image_dir = root / "ADEChallengeData2016" / "images" / folder
        gt_dir = root / "ADEChallengeData2016" / "annotations_detectron2" / folder
        image_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        labels[folder] = []
        for i in range(1, n + 1):
            h, w = 6 + i, 9
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(image_dir / f"{prefix}_{i:08d}.jpg")
            label = rng.choice([0, 2, 149, 255], size=(h, w)).astype(np.uint8)
            Image.fromarray(label).save(gt_dir / f"{prefix}_{i:08d}.png")
            labels[folder].append(label)
    return labels


@pytest.fixture
def ade_root(tmp_path: Path) -> Iterator[tuple[Path, dict[str, list[np.ndarray]]]]:
    """The builtin ADE20K names re-registered under a tiny dataset root, restored afterwards."""
    labels = _write_ade(tmp_path)

    def drop() -> None:
        for n in NAMES:
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)

    drop()
    register_all_ade20k(str(tmp_path))
    try:
        yield tmp_path, labels
    finally:
        drop()
        register_all_ade20k(datasets_root())


def test_categories() -> None:
    assert len(ADE20K_SEM_SEG_CATEGORIES) == 150 == len(set(ADE20K_SEM_SEG_CATEGORIES))
    assert ADE20K_SEM_SEG_CATEGORIES[:3] == ["wall", "building", "sky"] and ADE20K_SEM_SEG_CATEGORIES[-1] == "flag"


def test_builtin_registration(ade_root) -> None:
    root, labels = ade_root
    base = root / "ADEChallengeData2016"
    for name, folder, prefix in (("ade20k_sem_seg_train", "training", "ADE_train"),
                                 ("ade20k_sem_seg_val", "validation", "ADE_val")):
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "sem_seg" and meta.ignore_label == 255
        assert meta.stuff_classes == ADE20K_SEM_SEG_CATEGORIES
        assert meta.image_root == str(base / "images" / folder)
        assert meta.sem_seg_root == str(base / "annotations_detectron2" / folder)
        dicts = DatasetCatalog.get(name)
        assert [Path(d["file_name"]).name for d in dicts] == [f"{prefix}_{i:08d}.jpg" for i in
                                                              range(1, len(labels[folder]) + 1)]
        assert [d["sem_seg_file_name"] for d in dicts] == [
            str(base / "annotations_detectron2" / folder / f"{prefix}_{i:08d}.png")
            for i in range(1, len(labels[folder]) + 1)]
        assert [(d["height"], d["width"]) for d in dicts] == [lb.shape for lb in labels[folder]]


def test_builtin_evaluates(ade_root) -> None:
    _, labels = ade_root
    ev = build_evaluator({"paths": {"output_dir": None}, "test": {"keypoint_oks_sigmas": []}}, "ade20k_sem_seg_val")
    assert isinstance(ev, SemSegEvaluator)
    ev._distributed = False
    ev.reset()
    for d, gt in zip(DatasetCatalog.get("ade20k_sem_seg_val"), labels["validation"]):
        pred = np.where(gt == 255, 0, gt)  # right everywhere that counts
        pred[0, 0] = 2 if gt[0, 0] != 2 else 0  # ... but one pixel
        scores = torch.nn.functional.one_hot(torch.from_numpy(pred.astype(np.int64)), 150).permute(2, 0, 1).float()
        ev.process([{"file_name": d["file_name"]}], [{"sem_seg": scores}])
    res = ev.evaluate()["sem_seg"]
    assert 90 < res["mIoU"] < 100 and 90 < res["pACC"] < 100
    # 0 (wall), 2 (sky), 149 (flag) occur; 1 (building) does not
    assert np.isnan(res["IoU-building"]) and not np.isnan(res["IoU-wall"]) and not np.isnan(res["IoU-flag"])
