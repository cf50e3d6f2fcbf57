"""Cityscapes evaluators: the numbers must be cityscapesscripts' own, from its command-line evaluation run
(in a subprocess) on the same ground truth and the same predictions written by hand in its result format."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detlightning.data import DatasetCatalog, MetadataCatalog
from detlightning.data.datasets.cityscapes import CITYSCAPES_STUFF_CLASSES, CITYSCAPES_THING_CLASSES
from detlightning.evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator, build_evaluator
from detlightning.structures import Instances

from ..data.cityscapes_fixture import H, W, write_cityscapes

pytest.importorskip("cityscapesscripts")

FRANK = "frankfurt_000000_000294"
LINDAU = "lindau_000001_000019"


def _box(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0 : y1 + 1, x0 : x1 + 1] = True
    return m


# (thing class, Cityscapes label id, score, mask) per image
PREDICTIONS = {
    FRANK: [
        ("car", 26, 0.9, _box(5, 5, 24, 24)),          # the car, exactly
        ("person", 24, 0.8, _box(36, 10, 49, 35)),     # the front person, exactly
        ("person", 24, 0.6, _box(30, 5, 41, 30)),      # the back person's full box: part of it is hidden
        ("truck", 27, 0.5, _box(60, 2, 75, 15)),       # on the caravan: no truck there
        ("car", 26, 0.4, _box(55, 22, 75, 37)),        # on the car crowd region
    ],
    LINDAU: [
        ("rider", 25, 0.95, _box(12, 5, 25, 25)),
        ("bicycle", 33, 0.7, _box(10, 12, 29, 31)),    # includes the rider's pixels
        ("person", 24, 0.85, _box(40, 0, 60, 8)),      # in the sky, ranked above the real persons
    ],
}
# semantic predictions, as Cityscapes label ids (what the result PNGs hold) and train ids (what the model emits)
LABEL_TO_TRAIN = {7: 0, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 33: 18}


def _sem_pred(stem: str) -> np.ndarray:
    """A label-id map: the ground truth's labels with some mistakes, and road where the ground truth is void."""
    gt = np.asarray(Image.open(_gt_file(stem, "labelIds"))).astype(np.uint8).copy()
    pred = np.where(np.isin(gt, list(LABEL_TO_TRAIN)), gt, 7).astype(np.uint8)
    pred[0:6, 0:30] = 26                # a car in the sky / on the void
    pred[30:40, 36:50] = 24 if stem == FRANK else 25
    pred[12:20, 10:20] = 33             # bicycle over part of a car / rider
    return pred


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cityscapes(tmp_path_factory.mktemp("cityscapes"), split="val")


def _gt_file(stem: str, kind: str) -> str:
    city = stem.split("_")[0]
    return str(ROOT / "gtFine" / "val" / city / f"{stem}_gtFine_{kind}.png")


ROOT: Path


@pytest.fixture
def dataset(root: Path) -> Iterator[str]:
    global ROOT
    ROOT = root
    name = f"_cs_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(thing_classes=list(CITYSCAPES_THING_CLASSES),
                                  stuff_classes=list(CITYSCAPES_STUFF_CLASSES), ignore_label=255,
                                  gt_dir=str(root / "gtFine" / "val"), image_dir=str(root / "leftImg8bit" / "val"))
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _image(stem: str) -> str:
    return str(ROOT / "leftImg8bit" / "val" / stem.split("_")[0] / f"{stem}_leftImg8bit.png")


def _reference(module: str, results_dir: Path, workdir: Path, setup: str = "") -> dict:
    """cityscapesscripts' own main() on ROOT's val split and the results in results_dir; its exported json."""
    env = {**os.environ, "CITYSCAPES_DATASET": str(ROOT), "CITYSCAPES_RESULTS": str(results_dir),
           "CITYSCAPES_EXPORT_DIR": str(workdir)}
    # np.in1d, which cityscapesscripts 2.3 calls, left numpy in 2.4: put it back as np.isin on the flattened input;
    code = (f"import sys; import numpy as np; import cityscapesscripts.evaluation.{module} as m\n"
            "if not hasattr(np, 'in1d'): np.in1d = lambda a, b, invert=False: np.isin(np.ravel(a), b, invert=invert)\n"
            # and its json dumps fail on numpy 2's scalars (files only: no number is changed)
            "import json\n"
            "def dump(d, path):\n"
            "    with open(path, 'w') as f:\n"
            "        json.dump(d, f, default=lambda o: o.item() if isinstance(o, np.generic) else o.__dict__)\n"
            "m.writeDict2JSON = dump\n"
            f"{setup}\nsys.argv = ['x']; m.main()")
    proc = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exported = [p for p in (workdir / f"result{module[4:]}.json",
                            ROOT / "evaluationResults" / f"result{module[4:]}.json") if p.is_file()]
    assert exported, f"no result json from {module}: {proc.stdout[-1000:]}"
    return json.loads(exported[0].read_text())


def test_instance_ap_equals_cityscapesscripts(dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    MetadataCatalog.get(dataset).evaluator_type = "cityscapes_instance"
    ev = build_evaluator({"paths": {"output_dir": None}, "test": {"keypoint_oks_sigmas": []}}, dataset)
    assert isinstance(ev, CityscapesInstanceEvaluator)
    ev.reset()
    for stem, preds in PREDICTIONS.items():
        inst = Instances((H, W))
        inst.pred_classes = torch.tensor([CITYSCAPES_THING_CLASSES.index(p[0]) for p in preds])
        inst.scores = torch.tensor([p[2] for p in preds])
        inst.pred_masks = torch.from_numpy(np.stack([p[3] for p in preds]))
        ev.process([{"file_name": _image(stem)}], [{"instances": inst}])
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    res = ev.evaluate()
    # the script's stray matches.json went into the evaluator's temporary folder, and the working directory is back
    assert Path.cwd() == tmp_path / "cwd" and not (tmp_path / "cwd" / "matches.json").exists()

    # the same predictions in cityscapesscripts' result format, written here
    results = tmp_path / "results"
    results.mkdir()
    for stem, preds in PREDICTIONS.items():
        lines = []
        for k, (_, label_id, score, mask) in enumerate(preds):
            Image.fromarray(mask.astype(np.uint8) * 255).save(results / f"{stem}_mask{k}.png")
            lines.append(f"{stem}_mask{k}.png {label_id} {float(torch.tensor(score))}\n")
        (results / f"{stem}_leftImg8bit_pred.txt").write_text("".join(lines))
    work = tmp_path / "work"
    work.mkdir()
    ref = _reference("evalInstanceLevelSemanticLabeling", results, work,
                     setup=f"m.args.gtInstancesFile = {str(work / 'gtInstances.json')!r}")["averages"]
    assert res["segm"] == {"AP": ref["allAp"] * 100, "AP50": ref["allAp50%"] * 100}
    # a case with some but not all right: strictly between 0 and 100
    assert 0 < res["segm"]["AP"] < res["segm"]["AP50"] < 100


def test_sem_seg_iou_equals_cityscapesscripts(dataset: str, tmp_path: Path) -> None:
    MetadataCatalog.get(dataset).evaluator_type = "cityscapes_sem_seg"
    ev = build_evaluator({"paths": {"output_dir": None}, "test": {"keypoint_oks_sigmas": []}}, dataset)
    assert isinstance(ev, CityscapesSemSegEvaluator)
    ev.reset()
    results = tmp_path / "results"
    results.mkdir()
    for stem in (FRANK, LINDAU):
        label_ids = _sem_pred(stem)
        train_ids = np.vectorize(LABEL_TO_TRAIN.get)(label_ids)
        scores = torch.nn.functional.one_hot(torch.from_numpy(train_ids), 19).permute(2, 0, 1).float()
        ev.process([{"file_name": _image(stem)}], [{"sem_seg": scores}])
        Image.fromarray(label_ids).save(results / f"{stem}_pred.png")
    res = ev.evaluate()
    work = tmp_path / "work"
    work.mkdir()
    ref = _reference("evalPixelLevelSemanticLabeling", results, work)
    assert res["sem_seg"] == {
        "IoU": 100.0 * ref["averageScoreClasses"],
        "iIoU": 100.0 * ref["averageScoreInstClasses"],
        "IoU_sup": 100.0 * ref["averageScoreCategories"],
        "iIoU_sup": 100.0 * ref["averageScoreInstCategories"],
    }
    assert all(0 < v < 100 for v in res["sem_seg"].values())


def test_missing_gt_dir(dataset: str) -> None:
    MetadataCatalog.remove(dataset)
    MetadataCatalog.get(dataset).set(thing_classes=list(CITYSCAPES_THING_CLASSES))
    ev = CityscapesSemSegEvaluator(dataset)
    ev.reset()
    with pytest.raises(KeyError, match="gt_dir"):
        ev.evaluate()
