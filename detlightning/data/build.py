"""Build detectron2-style data loaders: dataset dicts from the catalog, optional filtering, a mapper, a sampler,
and batching into ``list[dict]``.

Both loaders are backed by IterableDatasets (the sampler is read inside the dataset), so a framework that
re-shards map-style loaders (Lightning's ``use_distributed_sampler``) leaves them alone: the samplers already
split the work across processes.
"""
from __future__ import annotations

import itertools
import logging
import operator
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils.data as torchdata

from detlightning.checkpoint.safe_pickle import ALLOW_UNSAFE_PICKLE_ENV, load_pickle
from detlightning.config import configurable
from detlightning.config.reader import cfg_get
from detlightning.structures import BoxMode
from detlightning.utils import comm

from .catalog import DatasetCatalog, MetadataCatalog
from .common import AspectRatioGroupedDataset, DatasetFromList, MapDataset, ToIterableDataset
from .dataset_mapper import DatasetMapper
from .detection_utils import check_metadata_consistency
from .samplers import InferenceSampler, RandomSubsetTrainingSampler, RepeatFactorTrainingSampler, TrainingSampler

__all__ = [
    "build_batch_data_loader",
    "build_detection_train_loader",
    "build_detection_test_loader",
    "get_detection_dataset_dicts",
    "load_proposals_into_dataset",
    "print_instances_class_histogram",
    "trivial_batch_collator",
    "worker_init_reset_seed",
    "total_batch_size_from_cfg",
]

logger = logging.getLogger(__name__)


def filter_images_with_only_crowd_annotations(dataset_dicts: list[dict], dataset_names: Sequence[str]) -> list[dict]:
    """Drop images without a non-crowd annotation (logged with the count)."""
    num_before = len(dataset_dicts)

    def valid(anns: list[dict]) -> bool:
        return any(ann.get("iscrowd", 0) == 0 for ann in anns)

    dataset_dicts = [x for x in dataset_dicts if valid(x["annotations"])]
    num_after = len(dataset_dicts)
    logger.info(
        "Removed %d images with no usable annotations from %s. %d images left.",
        num_before - num_after,
        ",".join(dataset_names),
        num_after,
    )
    return dataset_dicts


def filter_images_with_few_keypoints(dataset_dicts: list[dict], min_keypoints_per_image: int) -> list[dict]:
    """Drop images with fewer than ``min_keypoints_per_image`` visible keypoints (logged with the count)."""
    num_before = len(dataset_dicts)

    def visible_keypoints_in_image(dic: dict) -> int:
        return sum(
            int((np.asarray(ann["keypoints"][2::3]) > 0).sum()) for ann in dic["annotations"] if "keypoints" in ann
        )

    dataset_dicts = [x for x in dataset_dicts if visible_keypoints_in_image(x) >= min_keypoints_per_image]
    logger.info(
        "Removed %d images with fewer than %d keypoints.", num_before - len(dataset_dicts), min_keypoints_per_image
    )
    return dataset_dicts


def load_proposals_into_dataset(
    dataset_dicts: list[dict], proposal_file: str, *, allow_unsafe_pickle: bool | None = None
) -> list[dict]:
    """Attach precomputed proposals (a pickle with ``ids``/``boxes``/``objectness_logits`` or the old
    ``indexes``/``scores`` names) to each dict as ``proposal_boxes`` (sorted by logit), ``proposal_objectness_logits``
    and ``proposal_bbox_mode``.

    The file is read with the restricted unpickler of the checkpoints (numpy arrays and plain containers only);
    anything else is refused naming the file, unless ``allow_unsafe_pickle=True`` or
    ``$DETLIGHTNING_ALLOW_UNSAFE_PICKLE=1`` says the file is trusted.
    """
    logger.info("Loading proposals from: %s", proposal_file)
    try:
        proposals = load_pickle(proposal_file, allow_unsafe=allow_unsafe_pickle)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Proposal file not found: {proposal_file}") from e
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(
            f"Refusing to load the proposal file {proposal_file}: {e}. For proposal files, opt in with "
            f"load_proposals_into_dataset(..., allow_unsafe_pickle=True) or {ALLOW_UNSAFE_PICKLE_ENV}=1 (e.g. "
            f"`{ALLOW_UNSAFE_PICKLE_ENV}=1 python scripts/train.py ...`), only for files you trust."
        ) from e
    if not isinstance(proposals, dict) or "boxes" not in proposals:
        raise ValueError(
            f"Proposal file {proposal_file} must hold a dict with 'ids', 'boxes' and 'objectness_logits', got "
            f"{type(proposals).__name__}" + (f" with keys {sorted(proposals)}" if isinstance(proposals, dict) else "")
        )
    for old, new in (("indexes", "ids"), ("scores", "objectness_logits")):
        if old in proposals:
            proposals[new] = proposals.pop(old)
    img_ids = {str(record["image_id"]) for record in dataset_dicts}
    id_to_index = {str(i): k for k, i in enumerate(proposals["ids"]) if str(i) in img_ids}
    bbox_mode = BoxMode(proposals["bbox_mode"]) if "bbox_mode" in proposals else BoxMode.XYXY_ABS
    for record in dataset_dicts:
        try:
            i = id_to_index[str(record["image_id"])]
        except KeyError as e:
            raise KeyError(f"{proposal_file} has no proposals for image id {record['image_id']}") from e
        boxes = proposals["boxes"][i]
        objectness_logits = proposals["objectness_logits"][i]
        inds = objectness_logits.argsort()[::-1]
        record["proposal_boxes"] = boxes[inds]
        record["proposal_objectness_logits"] = objectness_logits[inds]
        record["proposal_bbox_mode"] = bbox_mode
    return dataset_dicts


def print_instances_class_histogram(dataset_dicts: list[dict], class_names: Sequence[str]) -> None:
    """Log how many (non-crowd) instances each class has."""
    num_classes = len(class_names)
    hist_bins = np.arange(num_classes + 1)
    histogram = np.zeros((num_classes,), dtype=int)
    for entry in dataset_dicts:
        classes = np.asarray([x["category_id"] for x in entry["annotations"] if not x.get("iscrowd", 0)], dtype=int)
        if len(classes):
            if classes.min() < 0 or classes.max() >= num_classes:
                raise ValueError(
                    f"Got an invalid category_id={classes.min() if classes.min() < 0 else classes.max()} for a "
                    f"dataset of {num_classes} classes ({entry.get('file_name', '?')})"
                )
        histogram += np.histogram(classes, bins=hist_bins)[0]
    total = int(histogram.sum())
    rows = ", ".join(f"{name}: {int(n)}" for name, n in zip(class_names, histogram))
    logger.info("Distribution of instances among all %d categories (total %d): %s", num_classes, total, rows)


def get_detection_dataset_dicts(
    names: str | Sequence[str],
    filter_empty: bool = True,
    min_keypoints: int = 0,
    proposal_files: Sequence[str] | None = None,
    check_consistency: bool = True,
) -> list[dict] | torchdata.Dataset:
    """Concatenate the registered datasets ``names``; drop images without usable annotations
    (``filter_empty``) or with fewer than ``min_keypoints`` visible keypoints; attach proposals."""
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise ValueError("get_detection_dataset_dicts: no dataset names given (datasets.train/test is empty?)")
    missing = [n for n in names if n not in DatasetCatalog]
    if missing:
        raise KeyError(
            f"Dataset(s) {missing} are not registered! Available datasets are: {', '.join(sorted(DatasetCatalog))}"
        )
    dataset_dicts = [DatasetCatalog.get(name) for name in names]
    if isinstance(dataset_dicts[0], torchdata.Dataset):
        if len(dataset_dicts) > 1:
            return torchdata.ConcatDataset(dataset_dicts)
        return dataset_dicts[0]
    for name, dicts in zip(names, dataset_dicts):
        if not len(dicts):
            raise ValueError(f"Dataset '{name}' is empty!")

    if proposal_files is not None:
        if len(names) != len(proposal_files):
            raise ValueError(f"{len(names)} datasets but {len(proposal_files)} proposal files")
        dataset_dicts = [load_proposals_into_dataset(d, f) for d, f in zip(dataset_dicts, proposal_files)]

    flat = list(itertools.chain.from_iterable(dataset_dicts))
    has_instances = "annotations" in flat[0]
    if filter_empty and has_instances:
        flat = filter_images_with_only_crowd_annotations(flat, names)
    if min_keypoints > 0 and has_instances:
        flat = filter_images_with_few_keypoints(flat, min_keypoints)

    if check_consistency and has_instances:
        try:
            class_names = MetadataCatalog.get(names[0]).thing_classes
        except AttributeError:
            class_names = None
        if class_names is not None:
            check_metadata_consistency("thing_classes", names)
            print_instances_class_histogram(flat, class_names)

    if not flat:
        raise ValueError(f"No valid data found in {','.join(names)} (all images were filtered out).")
    return flat


def trivial_batch_collator(batch: list[Any]) -> list[Any]:
    """The batch as is: a list of dicts."""
    return batch


def worker_init_reset_seed(worker_id: int) -> None:
    """Give each data-loader worker its own numpy/python/torch seeds (augmentations draw from numpy)."""
    initial_seed = torch.initial_seed() % 2**31
    seed = initial_seed + worker_id
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    import random

    random.seed(seed)


def build_batch_data_loader(
    dataset: torchdata.Dataset,
    sampler: torchdata.Sampler | None,
    total_batch_size: int,
    *,
    aspect_ratio_grouping: bool = False,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    drop_last: bool = True,
    prefetch_factor: int | None = 2,
    persistent_workers: bool = False,
    pin_memory: bool = False,
    **kwargs: Any,
) -> Any:
    """Batch ``dataset`` (read through ``sampler``) into per-process batches of
    ``total_batch_size // world_size``; with ``aspect_ratio_grouping`` a batch holds only landscape or only
    portrait images. Yields ``list[dict]`` (or ``collate_fn`` of it)."""
    world_size = comm.get_world_size()
    if total_batch_size <= 0 or total_batch_size % world_size != 0:
        raise ValueError(
            f"Total batch size ({total_batch_size}) must be a positive multiple of the number of processes "
            f"({world_size})."
        )
    batch_size = total_batch_size // world_size

    if isinstance(dataset, torchdata.IterableDataset):
        if sampler is not None:
            raise ValueError("sampler must be None if dataset is an IterableDataset")
    else:
        dataset = ToIterableDataset(dataset, sampler, shard_chunk_size=batch_size)

    loader_kwargs: dict[str, Any] = dict(num_workers=num_workers, worker_init_fn=worker_init_reset_seed, **kwargs)
    if num_workers > 0:
        loader_kwargs.update(prefetch_factor=prefetch_factor, persistent_workers=persistent_workers)
    if aspect_ratio_grouping:
        data_loader = torchdata.DataLoader(
            dataset, collate_fn=operator.itemgetter(0), pin_memory=pin_memory, **loader_kwargs
        )  # yield individual mapped dicts
        grouped = AspectRatioGroupedDataset(data_loader, batch_size)
        if collate_fn is None:
            return grouped
        return MapDataset(grouped, collate_fn)
    return torchdata.DataLoader(
        dataset,
        batch_size=batch_size,
        drop_last=drop_last,
        collate_fn=trivial_batch_collator if collate_fn is None else collate_fn,
        pin_memory=pin_memory,
        **loader_kwargs,
    )


def _mapped_dataset(dataset: list[dict] | torchdata.Dataset, mapper: Callable[[dict], Any] | None) -> torchdata.Dataset:
    """A list of dicts becomes a ``DatasetFromList`` (no copy); ``mapper`` (if given) is applied lazily per element."""
    base = DatasetFromList(dataset, copy=False) if isinstance(dataset, list) else dataset
    return base if mapper is None else MapDataset(base, mapper)


def _pick_sampler(dataset: torchdata.Dataset, sampler: Any, default: Callable[[int], torchdata.Sampler]) -> Any:
    """None for an IterableDataset (which must come without a sampler); else ``sampler`` or ``default(len)``."""
    if not isinstance(dataset, torchdata.IterableDataset):
        return default(len(dataset)) if sampler is None else sampler
    if sampler is not None:
        raise ValueError("sampler must be None if dataset is an IterableDataset")
    return None


def total_batch_size_from_cfg(cfg: Any) -> int:
    """``dataloader.ims_per_batch``: images per step over all processes (detectron2's SOLVER.IMS_PER_BATCH)."""
    return int(cfg_get(cfg, "dataloader.ims_per_batch"))


def _train_loader_from_config(
    cfg: Any, mapper: Callable | None = None, *, dataset: Any = None, sampler: Any = None
) -> dict[str, Any]:
    if dataset is None:
        keypoint_on = bool(cfg_get(cfg, "model.keypoint_on"))
        load_proposals = bool(cfg_get(cfg, "model.load_proposals"))
        dataset = get_detection_dataset_dicts(
            list(cfg_get(cfg, "datasets.train")),
            filter_empty=bool(cfg_get(cfg, "dataloader.filter_empty_annotations")),
            min_keypoints=int(cfg_get(cfg, "model.roi_keypoint_head.min_keypoints_per_image"))
            if keypoint_on
            else 0,
            proposal_files=list(cfg_get(cfg, "datasets.proposal_files_train")) if load_proposals else None,
        )
    if mapper is None:
        mapper = DatasetMapper(cfg, True)

    if sampler is None and not isinstance(dataset, torchdata.IterableDataset):
        sampler_name = cfg_get(cfg, "dataloader.sampler_train")
        seed = cfg_get(cfg, "seed")
        seed = None if seed is None or int(seed) < 0 else int(seed)
        logger.info("Using training sampler %s", sampler_name)
        if sampler_name == "TrainingSampler":
            sampler = TrainingSampler(len(dataset), seed=seed)
        elif sampler_name == "RepeatFactorTrainingSampler":
            repeat_factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
                dataset,
                float(cfg_get(cfg, "dataloader.repeat_threshold")),
                sqrt=bool(cfg_get(cfg, "dataloader.repeat_sqrt")),
            )
            sampler = RepeatFactorTrainingSampler(repeat_factors, seed=seed)
        elif sampler_name == "RandomSubsetTrainingSampler":
            sampler = RandomSubsetTrainingSampler(
                len(dataset), float(cfg_get(cfg, "dataloader.random_subset_ratio")), seed_shuffle=seed
            )
        else:
            raise ValueError(
                f"Unknown training sampler: {sampler_name!r}; use TrainingSampler, RepeatFactorTrainingSampler "
                "or RandomSubsetTrainingSampler"
            )
    num_workers = int(cfg_get(cfg, "dataloader.num_workers"))
    return {
        "dataset": dataset,
        "sampler": sampler,
        "mapper": mapper,
        "total_batch_size": total_batch_size_from_cfg(cfg),
        "aspect_ratio_grouping": bool(cfg_get(cfg, "dataloader.aspect_ratio_grouping")),
        "num_workers": num_workers,
        "pin_memory": bool(cfg_get(cfg, "dataloader.pin_memory")),
        "persistent_workers": bool(cfg_get(cfg, "dataloader.persistent_workers")) and num_workers > 0,
    }


@configurable(from_config=_train_loader_from_config)
def build_detection_train_loader(
    dataset: list[dict] | torchdata.Dataset,
    *,
    mapper: Callable[[dict], Any] | None,
    sampler: torchdata.Sampler | None = None,
    total_batch_size: int,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    **kwargs: Any,
) -> Any:
    """An infinite iterable of per-process training batches (``list[dict]`` of mapped samples).

    ``dataset``: list of dataset dicts or a Dataset; ``mapper``: applied to each element (None: none);
    ``sampler``: default ``TrainingSampler(len(dataset))``; ``total_batch_size``: over all processes.
    Call as ``build_detection_train_loader(cfg)`` to take everything from the config. Extra ``kwargs``
    (``pin_memory``, ``persistent_workers``, ``prefetch_factor``) go to the DataLoader.
    """
    mapped = _mapped_dataset(dataset, mapper)
    chosen = _pick_sampler(mapped, sampler, TrainingSampler)
    if chosen is not None and not isinstance(chosen, torchdata.Sampler):
        raise TypeError(f"Expect a Sampler but got {type(chosen).__name__}")
    loader_options = dict(aspect_ratio_grouping=aspect_ratio_grouping, num_workers=num_workers, collate_fn=collate_fn)
    return build_batch_data_loader(mapped, chosen, total_batch_size, **loader_options, **kwargs)


def _test_loader_from_config(cfg: Any, dataset_name: str | Sequence[str], mapper: Callable | None = None) -> dict:
    if isinstance(dataset_name, str):
        dataset_name = [dataset_name]
    proposal_files = None
    if cfg_get(cfg, "model.load_proposals"):
        tests = list(cfg_get(cfg, "datasets.test"))
        files = list(cfg_get(cfg, "datasets.proposal_files_test"))
        proposal_files = [files[tests.index(x)] for x in dataset_name]
    dataset = get_detection_dataset_dicts(dataset_name, filter_empty=False, proposal_files=proposal_files)
    if mapper is None:
        mapper = DatasetMapper(cfg, False)
    return {
        "dataset": dataset,
        "mapper": mapper,
        "num_workers": int(cfg_get(cfg, "dataloader.num_workers")),
        "sampler": InferenceSampler(len(dataset)) if not isinstance(dataset, torchdata.IterableDataset) else None,
        "pin_memory": bool(cfg_get(cfg, "dataloader.pin_memory")),
        "persistent_workers": bool(cfg_get(cfg, "dataloader.persistent_workers")),
    }


@configurable(from_config=_test_loader_from_config)
def build_detection_test_loader(
    dataset: list[dict] | torchdata.Dataset,
    *,
    mapper: Callable[[dict], Any] | None,
    sampler: torchdata.Sampler | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> torchdata.DataLoader:
    """A DataLoader over this process's share of ``dataset`` (``InferenceSampler``: every element exactly once
    across processes, in order), batches of ``batch_size`` as ``list[dict]``.

    Call as ``build_detection_test_loader(cfg, "coco_2017_val")`` to take the mapper and workers from the
    config. ``len(loader)`` is the number of local batches. ``pin_memory`` and ``persistent_workers`` (kept
    only with ``num_workers > 0``) go to the DataLoader.
    """
    dataset = _mapped_dataset(dataset, mapper)
    sampler = _pick_sampler(dataset, sampler, InferenceSampler)
    if sampler is not None:
        # Sampler inside an IterableDataset: workers take round-robin chunks of batch_size, which the
        # DataLoader reads back in order, so results keep the dataset order.
        dataset = ToIterableDataset(dataset, sampler, shard_sampler=True, shard_chunk_size=batch_size)
    return torchdata.DataLoader(
        dataset,
        batch_size=batch_size,
        drop_last=False,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator if collate_fn is None else collate_fn,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
    )
