"""scripts/validate_data.py and dataloader.validate: every problem of a dataset listed once, with counts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detlightning.data import DatasetCatalog, MetadataCatalog
from detlightning.data.datasets import register_coco_instances
from detlightning.data.validate import validate_datasets, validate_datasets_from_cfg
from tests._scripts import load_script


def _write_dataset(root: Path, bad: bool) -> Path:
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "a.png")
    Image.fromarray(np.array([[30000, 60000]] * 20, dtype=np.uint16)).save(root / "g16.png")  # 2 wide, 20 high
    images = [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
              {"id": 2, "file_name": "g16.png", "height": 20, "width": 2}]  # fmt: skip
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 2, 2], "iscrowd": 0}]  # fmt: skip
    if bad:
        images += [{"id": 3, "file_name": "missing.png", "height": 20, "width": 30},
                   {"id": 4, "file_name": "a.png", "height": 21, "width": 30},
                   {"id": 5, "file_name": 123, "height": 20, "width": 30}]  # fmt: skip
        anns += [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": "0"},
            {"id": 11, "image_id": 1, "category_id": "1", "bbox": [1, 1, 5, 5]},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [1e40, 1, 5, 5]},
            {"id": 13, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 5]},
            {"id": 14, "image_id": 1, "category_id": 1, "bbox": [40, 1, 5, 5]},
            {"id": 15, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "segmentation": []},
            {"id": 16, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": "1"},
        ]
    path = root / ("bad.json" if bad else "good.json")
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    return path


@pytest.fixture()
def datasets(tmp_path: Path):
    names = {}
    for bad in (False, True):
        name = f"test_validate_data_{'bad' if bad else 'good'}"
        register_coco_instances(name, {}, str(_write_dataset(tmp_path, bad)), str(tmp_path))
        names[bad] = name
    yield names
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_report_lists_every_problem_with_counts(datasets):
    report = validate_datasets([datasets[True]])
    counts = {f"{sev}:{kind}": n for (sev, kind), n in report.counts().items()}
    assert counts == {
        "error:bad_type": 4,  # file_name 123, iscrowd "0", category_id "1", iscrowd "1"
        "error:bad_bbox": 1,  # 1e40
        "error:missing_image": 1,
        "error:size_mismatch": 1,  # image 4 says 21 rows, a.png has 20
        "warning:empty_box": 1,
        "warning:box_outside_image": 1,
        "warning:empty_segmentation": 1,
        "warning:16bit_image": 1,
    }, report.format()
    text = report.format()
    for fragment in ("annotation id 10", "'iscrowd'", "str '0'", "annotation id 11", "'category_id'", "str '1'",
                     "image id 5", "'file_name'", "int 123", "annotation id 12", "1e+40", "missing.png",
                     "30x21", "annotation id 13", "annotation id 14", "annotation id 15", "g16.png"):  # fmt: skip
        assert fragment in text, fragment
    assert "ERROR bad_type: 4" in text and "WARNING empty_box: 1" in text
    assert report.num_images == 4 and report.num_annotations == 3  # images 1-4 (5 refused); annotations 1, 2, 15


def test_script_exit_status(datasets, tmp_path: Path, capsys):
    script = load_script("validate_data")
    assert script.main([datasets[False]]) == 0
    out = capsys.readouterr().out
    assert "0 errors, 1 warnings" in out and "16bit_image" in out
    assert script.main([datasets[False], datasets[True], "--max-per-kind", "1"]) == 1
    out = capsys.readouterr().out
    assert "ERROR bad_type: 4" in out and "... and 3 more" in out and "7 errors, 5 warnings" in out
    # an unregistered json given directly
    assert script.main(["--coco", "direct_json", str(tmp_path / "bad.json"), str(tmp_path), "--no-images"]) == 1
    out = capsys.readouterr().out
    assert "missing_image" not in out and "bad.json" in out
    assert script.main(["no_such_dataset_xyz"]) == 2


def test_dataloader_validate_stops_before_training(datasets):
    cfg = {"datasets": {"train": [datasets[True]], "test": [datasets[False]]},
           "dataloader": {"skip_bad_samples": False}}
    with pytest.raises(ValueError) as e:
        validate_datasets_from_cfg(cfg)
    assert "7 errors" in str(e.value) and "annotation id 12" in str(e.value) and "skip_bad_samples" in str(e.value)
    cfg["dataloader"]["skip_bad_samples"] = True
    assert len(validate_datasets_from_cfg(cfg).errors) == 7
    cfg["datasets"]["train"] = [datasets[False]]
    assert validate_datasets_from_cfg(cfg).ok


def test_hydra_key_runs_validation_in_datamodule_setup(datasets):
    from detlightning.config import compose
    from detlightning.data import DetectionDataModule

    cfg = compose(["dataloader.validate=true", f"datasets.train=[{datasets[True]}]", "datasets.test=[]"])
    with pytest.raises(ValueError, match="dataloader.validate found 7 errors"):
        DetectionDataModule(cfg).setup("fit")
    DetectionDataModule(compose([f"datasets.train=[{datasets[True]}]"])).setup("fit")  # default: off
