"""Evaluators in a real 2-process (gloo, CPU) run: predictions are gathered on rank 0, other ranks get {} / None."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.evaluation import test_coco_evaluation as coco_t

WORLD_SIZE = 2


def _worker(rank: int, init_file: str, gt_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        from detlightning.data.catalog import MetadataCatalog
        from detlightning.evaluation import COCOEvaluator, DatasetEvaluators, inference_on_dataset

        MetadataCatalog.get("_dist_coco").set(
            json_file=gt_file, thing_classes=coco_t.CLASS_NAMES,
            thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(coco_t.CAT_IDS)})
        # each rank sees a different part of the dataset, as with a distributed sampler
        my_images = [10, 11, 12][rank::WORLD_SIZE]
        loader = [[{"image_id": i}] for i in my_images]

        def model(inputs):
            return [{"instances": coco_t._instances(x["image_id"])} for x in inputs]

        evaluators = DatasetEvaluators([
            COCOEvaluator("_dist_coco", tasks=("bbox", "segm"), distributed=True, use_fast_impl=False),
            COCOEvaluator("_dist_coco", tasks=("bbox",), distributed=False, use_fast_impl=False),
        ])
        # two evaluators with the same keys: DatasetEvaluators only merges on rank 0, so only rank 0 complains
        try:
            res = inference_on_dataset(model, loader, evaluators)
            dup = False
        except ValueError:
            dup = True
        res = inference_on_dataset(
            model, loader, COCOEvaluator("_dist_coco", tasks=("bbox", "segm"), distributed=True, use_fast_impl=False))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"res": res, "dup": dup}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_coco_evaluator_gathers_on_rank0(tmp_path: Path):
    gt_file = tmp_path / "instances.json"
    gt_file.write_text(json.dumps(coco_t._instances_gt()))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(gt_file), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    r0 = json.loads((out_dir / "rank0.json").read_text())
    r1 = json.loads((out_dir / "rank1.json").read_text())
    assert r1 == {"res": {}, "dup": False}
    assert r0["dup"] is True
    ref = coco_t._reference_results()
    exp_bbox = coco_t._expected(coco_t._pycocotools(str(gt_file), [{k: v for k, v in r.items() if k != "segmentation"}
                                                                   for r in ref], "bbox"),
                                coco_t.BOX_METRICS, coco_t.CLASS_NAMES)
    exp_segm = coco_t._expected(coco_t._pycocotools(str(gt_file), [{k: v for k, v in r.items() if k != "bbox"}
                                                                   for r in ref], "segm"),
                                coco_t.BOX_METRICS, coco_t.CLASS_NAMES)
    # all three images' predictions, from both ranks, were evaluated together
    coco_t._assert_close({k: (math.nan if v is None else v) for k, v in r0["res"]["bbox"].items()}, exp_bbox)
    coco_t._assert_close({k: (math.nan if v is None else v) for k, v in r0["res"]["segm"].items()}, exp_segm)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
