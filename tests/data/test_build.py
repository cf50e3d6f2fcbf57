from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from detlightning.data import (
    DatasetCatalog,
    DatasetFromList,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    load_proposals_into_dataset,
)
from detlightning.data.build import trivial_batch_collator
from detlightning.data.common import AspectRatioGroupedDataset, ToIterableDataset
from detlightning.data.samplers import InferenceSampler


@pytest.fixture()
def small_dicts(request: pytest.FixtureRequest):
    name = f"test_build_{request.node.name}"
    dicts = [
        {"file_name": "a", "image_id": 1, "height": 4, "width": 8, "annotations": [{"category_id": 0, "iscrowd": 1}]},
        {"file_name": "b", "image_id": 2, "height": 4, "width": 8,
         "annotations": [{"category_id": 1, "keypoints": [1, 1, 2, 2, 2, 0]}]},
        {"file_name": "c", "image_id": 3, "height": 8, "width": 4, "annotations": []},
        {"file_name": "d", "image_id": 4, "height": 8, "width": 4,
         "annotations": [{"category_id": 0, "keypoints": [1, 1, 2, 2, 2, 2]}]},
    ]  # fmt: skip
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    yield name
    DatasetCatalog.remove(name)


def test_get_detection_dataset_dicts_filters(small_dicts: str):
    assert [d["image_id"] for d in get_detection_dataset_dicts(small_dicts, filter_empty=False)] == [1, 2, 3, 4]
    assert [d["image_id"] for d in get_detection_dataset_dicts(small_dicts)] == [2, 4]  # crowd-only, empty out
    kept = get_detection_dataset_dicts(small_dicts, filter_empty=False, min_keypoints=2)
    assert [d["image_id"] for d in kept] == [4]
    with pytest.raises(KeyError) as e:
        get_detection_dataset_dicts(["nope_xyz"])
    assert "nope_xyz" in str(e.value) and small_dicts in str(e.value)


def test_load_proposals(tmp_path: Path):
    dicts = [{"image_id": 7}, {"image_id": 8}]
    props = {"ids": [8, 7], "boxes": [np.ones((2, 4)), np.array([[0, 0, 1, 1], [0, 0, 2, 2.0]])],
             "objectness_logits": [np.array([0.1, 0.2]), np.array([0.5, 0.9])]}  # fmt: skip
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps(props))
    out = load_proposals_into_dataset(dicts, str(path))
    np.testing.assert_array_equal(out[0]["proposal_boxes"], [[0, 0, 2, 2], [0, 0, 1, 1]])  # sorted by logit
    np.testing.assert_array_equal(out[0]["proposal_objectness_logits"], [0.9, 0.5])


def test_dataset_from_list_serialized_roundtrip():
    items = [{"a": i, "arr": np.arange(i)} for i in range(5)]
    ds = DatasetFromList(items)
    assert len(ds) == 5 and ds[3]["a"] == 3 and ds[4]["arr"].tolist() == [0, 1, 2, 3]
    ds[3]["a"] = 100
    assert ds[3]["a"] == 3  # every access is a fresh copy


def test_train_loader_batches(tiny_cfg):
    cfg = tiny_cfg("dataloader.ims_per_batch=3", "dataloader.aspect_ratio_grouping=false")
    loader = build_detection_train_loader(cfg)
    batches = list(itertools.islice(iter(loader), 4))  # infinite: more batches than 8 images / 3
    for b in batches:
        assert isinstance(b, list) and len(b) == 3
        assert all(isinstance(x, dict) and x["image"].dtype == torch.uint8 and "instances" in x for x in b)


def test_train_loader_aspect_ratio_grouping(tiny_cfg):
    loader = build_detection_train_loader(tiny_cfg("dataloader.ims_per_batch=2"))
    assert isinstance(loader, AspectRatioGroupedDataset)
    for b in itertools.islice(iter(loader), 6):
        assert len({x["width"] > x["height"] for x in b}) == 1


def test_train_loader_explicit_args(shapes_root):
    dicts = DatasetCatalog.get("tshapes_train")
    loader = build_detection_train_loader(dicts, mapper=lambda d: d["image_id"], total_batch_size=4,
                                          aspect_ratio_grouping=False)  # fmt: skip
    b = next(iter(loader))
    assert len(b) == 4 and all(isinstance(x, int) for x in b)
    with pytest.raises(ValueError, match="multiple"):
        build_detection_train_loader(dicts, mapper=None, total_batch_size=0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_test_loader_every_item_once_in_order(tiny_cfg, num_workers: int):
    loader = build_detection_test_loader(tiny_cfg(f"dataloader.num_workers={num_workers}"), "tshapes_val")
    assert len(loader) == 4
    batches = list(loader)
    assert all(isinstance(b, list) and len(b) == 1 for b in batches)
    assert [b[0]["image_id"] for b in batches] == [d["image_id"] for d in DatasetCatalog.get("tshapes_val")]
    assert "instances" not in batches[0][0]


@pytest.mark.parametrize("num_workers", [0, 3])
def test_test_loader_shards_across_simulated_ranks(num_workers: int):
    data = list(range(11))
    seen = []
    for rank in range(3):
        sampler = InferenceSampler(len(data), rank=rank, world_size=3)
        loader = build_detection_test_loader(data, mapper=None, sampler=sampler, batch_size=2, num_workers=num_workers)
        seen.extend(x for b in loader for x in b)
    assert seen == data


def test_to_iterable_dataset_and_collator():
    ds = ToIterableDataset(list("abcdef"), [5, 0, 2])
    assert list(ds) == ["f", "a", "c"] and len(ds) == 3
    assert trivial_batch_collator([1, {"a": 2}]) == [1, {"a": 2}]
