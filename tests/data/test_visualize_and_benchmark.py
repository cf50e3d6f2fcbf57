from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from detlightning.data.benchmark import benchmark_train_loader
from tests._scripts import load_script

from .conftest import PREFIX, TINY


def _load_script():
    return load_script("visualize_data")


def test_visualize_writes_annotated_pngs(shapes_root: Path, tmp_path: Path):
    vis = _load_script()
    base = [
        "model=mask_rcnn", "model.keypoint_on=true", f"datasets.shapes.prefix={PREFIX}",
        f"datasets.shapes.num_train={TINY['num_train']}", f"datasets.shapes.num_val={TINY['num_val']}",
        f"datasets.shapes.image_size={TINY['image_size']}", f"datasets.shapes.root={shapes_root}",
        f"datasets.train=[{PREFIX}_train]", "input.min_size_train=[96]", "input.max_size_train=200",
    ]  # fmt: skip
    args = ["--num", "3", "--output", str(tmp_path / "vis"), "+data=shapes", *base]
    try:
        written = vis.main(args)
    except Exception:  # the data group is already in the defaults list
        args[args.index("+data=shapes")] = "data=shapes"
        written = vis.main(args)
    assert len(written) == 3
    for p in written:
        img = np.asarray(Image.open(p))
        assert img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) == 96


def test_draw_sample_marks_boxes(shapes_root: Path):
    vis = _load_script()
    from detlightning.data import DatasetCatalog, DatasetMapper, MetadataCatalog
    from detlightning.data import transforms as T

    d = DatasetCatalog.get(f"{PREFIX}_train")[0]
    mapper = DatasetMapper(True, augmentations=[T.NoOpTransform()], image_format="BGR")
    sample = mapper(d)
    drawn = np.asarray(vis.draw_sample(sample, MetadataCatalog.get(f"{PREFIX}_train"), "BGR"))
    plain = sample["image"].permute(1, 2, 0).numpy()[..., ::-1]
    x0, y0, x1, y1 = sample["instances"].gt_boxes.tensor[0].tolist()
    # the box outline is drawn in the class colour along its bottom edge
    color = MetadataCatalog.get(f"{PREFIX}_train").thing_colors[int(sample["instances"].gt_classes[0])]
    xm = int((x0 + x1) / 2)
    band = drawn[max(int(y1) - 2, 0) : int(y1) + 2, xm].astype(int)
    assert (np.abs(band - color).sum(axis=1) < 30).any()
    assert (drawn != plain).any()


def test_benchmark_train_loader(tiny_cfg):
    rate = benchmark_train_loader(tiny_cfg("dataloader.ims_per_batch=2"), num_iters=3, warmup_iters=1)
    assert rate > 0
