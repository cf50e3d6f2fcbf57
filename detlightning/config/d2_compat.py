"""A detectron2 config turned into detlightning's composed Hydra config, for the edges that need one:
``scripts/*.py d2_config=path.yaml`` (:func:`apply_d2_config`) and :func:`load_d2_config`.

The model library needs none of this: ``build_model(cfg_node)`` reads a ``CfgNode`` in place through
:mod:`detlightning.config.reader`. The Lightning engine, whose checkpoints store a ``DictConfig``, and the scripts
convert here.

``D2_KEY_MAP`` maps every key of detectron2's defaults to its detlightning key (``None``: no equivalent). Most keys
are detectron2's, lower-cased (``MODEL.ROI_HEADS.NUM_CLASSES`` -> ``model.roi_heads.num_classes``); the few that
live elsewhere in our config are the reader's ``RENAMED_D2_KEYS``, and the ones we do not implement are in
``_UNSUPPORTED`` (with the reason). A key without an equivalent is reported by name whenever its value is not
detectron2's default, so no setting is dropped silently: a :class:`UnsupportedD2KeysWarning`, or ``ValueError`` with
``strict=True``.
"""
from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from .config import hydra_task_overrides
from .d2_defaults import get_d2_cfg
from .reader import RENAMED_D2_KEYS

__all__ = [
    "D2_KEY_MAP",
    "UnsupportedD2KeysWarning",
    "apply_d2_config",
    "command_line_keys",
    "load_d2_config",
    "to_detlightning_cfg",
    "unsupported_d2_keys",
    "warn_unsupported_d2_keys",
]

logger = logging.getLogger(__name__)


class UnsupportedD2KeysWarning(UserWarning):
    """detectron2 config keys with a non-default value that detlightning has no equivalent for (ignored)."""


# detectron2 keys that live somewhere else than their lower-cased name in our config (the reader's table)
_RENAMED: dict[str, str] = RENAMED_D2_KEYS

# detectron2 keys with no detlightning equivalent -> why (shown when a config sets them to a non-default value)
_UNSUPPORTED: dict[str, str] = {
    "VERSION": "only VERSION 2 configs are read",
    "SOLVER.NUM_DECAYS": "WarmupStepWithFixedGammaLR is not implemented (solver.lr_scheduler_name: "
    "WarmupMultiStepLR or WarmupCosineLR)",
    "SOLVER.REFERENCE_WORLD_SIZE": "no automatic rescaling by device count: set dataloader.ims_per_batch, "
    "solver.base_lr/max_iter/steps for your devices",
    "TEST.EXPECTED_RESULTS": "no built-in accuracy check after training",
    "FLOAT32_PRECISION": "call torch.set_float32_matmul_precision(...) in your script",
    "GLOBAL.HACK": "detectron2's global_cfg scratch space has no equivalent",
}

_NOT_A_DEFAULT = "not one of detectron2's default keys (a project-specific key): read it from the CfgNode yourself"


def _build_key_map() -> dict[str, str | None]:
    table: dict[str, str | None] = {}
    for key in get_d2_cfg().flatten():
        if key in _UNSUPPORTED:
            table[key] = None
        else:
            table[key] = _RENAMED.get(key, key.lower())
    unknown = (set(_RENAMED) | set(_UNSUPPORTED)) - set(table)
    assert not unknown, f"d2_compat tables name keys detectron2 does not have: {sorted(unknown)}"
    return table


#: detectron2 key -> detlightning key (None: no equivalent). Every key of ``get_d2_cfg()`` is here.
D2_KEY_MAP: dict[str, str | None] = _build_key_map()

# Where the d2 value wins only when the file sets it to a non-default value (see apply_d2_config): run settings
# that a Hydra launch decides (placement, output directory, cudnn, callbacks).
_RUN_LEVEL = {"MODEL.DEVICE", "OUTPUT_DIR", "CUDNN_BENCHMARK", "TEST.PRECISE_BN.ENABLED", "TEST.PRECISE_BN.NUM_ITER"}
# the parts of our config a detectron2 file decides in apply_d2_config
_D2_SECTIONS = ("model", "input", "datasets", "dataloader", "solver", "test")


# ---------------------------------------------------------------------------------------------- helpers
def _is_cfg_node(obj: Any) -> bool:
    return isinstance(obj, Mapping) and type(obj).__name__ == "CfgNode"


def _flatten(node: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _plain(value: Any) -> Any:
    """Tuples (yacs) -> lists (OmegaConf), recursively."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


_D2_DEFAULTS_FLAT: dict[str, Any] = {k: _plain(v) for k, v in get_d2_cfg().flatten().items()}


def _is_default(key: str, value: Any) -> bool:
    return key in _D2_DEFAULTS_FLAT and _plain(value) == _D2_DEFAULTS_FLAT[key]


def _reason(key: str) -> str:
    return _UNSUPPORTED.get(key, _NOT_A_DEFAULT)


def unsupported_d2_keys(cfg: Mapping, project_keys: bool = True) -> dict[str, str]:
    """``{d2 key: why}`` for every key of ``cfg`` that detlightning ignores although it is not at detectron2's
    default: detectron2 keys with no equivalent, and (``project_keys``) keys detectron2 does not have, which a
    conversion to our config drops. Empty for a config detlightning fully honours."""
    return {
        key: _reason(key)
        for key, value in _flatten(cfg).items()
        if D2_KEY_MAP.get(key) is None and not _is_default(key, value) and (project_keys or key in _UNSUPPORTED)
    }


def warn_unsupported_d2_keys(cfg: Mapping, source: str = "detectron2 config") -> None:
    """Warn (:class:`UnsupportedD2KeysWarning`) about detectron2 keys set to a value detlightning does not
    implement. A project's own keys are not reported: read in place, they reach the user's components."""
    _report(unsupported_d2_keys(cfg, project_keys=False), False, _flatten(cfg), source)


def _group_choices(flat: Mapping[str, Any]) -> list[str]:
    """Hydra group selections whose structure matches the detectron2 config (values are all set afterwards)."""
    meta = flat.get("MODEL.META_ARCHITECTURE", "GeneralizedRCNN")
    if meta == "RetinaNet":
        model = "retinanet"
    elif meta == "ProposalNetwork":
        model = "rpn"
    elif meta == "PanopticFPN":
        model = "panoptic_fpn"
    elif meta == "SemanticSegmentor":
        model = "semantic_fpn"
    elif flat.get("MODEL.PROPOSAL_GENERATOR.NAME") == "PrecomputedProposals":
        model = "fast_rcnn"
    elif flat.get("MODEL.ROI_HEADS.NAME") == "CascadeROIHeads":
        model = "cascade_mask_rcnn" if flat.get("MODEL.MASK_ON") else "cascade_rcnn"
    elif flat.get("MODEL.KEYPOINT_ON"):
        model = "keypoint_rcnn"
    elif flat.get("MODEL.MASK_ON"):
        model = "mask_rcnn"
    else:
        model = "faster_rcnn"  # also the base for a user's own registered meta-architecture

    depth = flat.get("MODEL.RESNETS.DEPTH", 50)
    if flat.get("MODEL.BACKBONE.NAME") == "build_resnet_backbone":
        backbone = "resnet101_c4" if depth == 101 else "resnet50_c4"
        if model in ("faster_rcnn", "mask_rcnn"):
            model += "_c4"  # the heads on res4 (RPN) and the res5 ROI head
    elif depth == 101 and flat.get("MODEL.RESNETS.NUM_GROUPS") == 32 and flat.get("MODEL.RESNETS.WIDTH_PER_GROUP") == 8:
        backbone = "resnext101_32x8d"
    else:
        backbone = "resnet101" if depth == 101 else "resnet50"

    names = [str(n) for n in list(flat.get("DATASETS.TRAIN", ())) + list(flat.get("DATASETS.TEST", ()))]
    if any(n.startswith("shapes") for n in names):
        data = "shapes"  # adds datasets.shapes: the generator parameters of the built-in dataset
    elif any("panoptic" in n for n in names):
        data = "coco_panoptic"
    elif any(n.startswith("keypoints_coco") for n in names):
        data = "coco_keypoints"
    else:
        data = "coco"  # the generic layout for registered datasets
    return [f"model={model}", f"backbone={backbone}", f"data={data}", "solver=sgd"]


_MISSING = object()
_BASE_CACHE: dict[tuple[str, ...], DictConfig] = {}


def _base_config(choices: list[str]) -> DictConfig:
    """``compose(choices)``, cached (composition costs ~0.3 s); never modify the returned config."""
    from .config import compose

    key = tuple(choices)
    if key not in _BASE_CACHE:
        _BASE_CACHE[key] = compose(choices)
    return _BASE_CACHE[key]  # read-only: callers merge into a new config


def _device(value: str) -> str:
    import torch

    if str(value).startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%r but CUDA is not available: the model is built on the CPU", value)
        return "cpu"
    return str(value)


def _report(unsupported: dict[str, str], strict: bool, flat: Mapping[str, Any], source: str) -> None:
    if not unsupported:
        return
    lines = "\n".join(f"  {k} = {flat[k]!r}: {why}" for k, why in sorted(unsupported.items()))
    msg = f"{source}: {len(unsupported)} detectron2 config key(s) have no detlightning equivalent:\n{lines}"
    if strict:
        raise ValueError(msg)
    warnings.warn(msg + "\n(they are ignored; pass strict=True to make this an error)", UnsupportedD2KeysWarning,
                  stacklevel=3)


# ----------------------------------------------------------------------------------------------- public API
def to_detlightning_cfg(cfg: Any, strict: bool = False) -> DictConfig:
    """Convert a detectron2 ``CfgNode`` (ours or detectron2's own) to detlightning's composed Hydra config.

    The composition (``model=``, ``backbone=``, ``data=`` groups) follows ``MODEL.META_ARCHITECTURE``,
    ``MASK_ON``/``KEYPOINT_ON``, ``ROI_HEADS.NAME``, the backbone and the dataset names; then every mapped key gets
    the CfgNode's value (``D2_KEY_MAP``), so the built model is the one detectron2 would build. ``MODEL.DEVICE``
    ``"cuda"`` on a machine without CUDA becomes ``"cpu"`` (with a warning).

    Raises:
        TypeError: ``cfg`` is not a CfgNode.
        ValueError: with ``strict=True``, when keys without equivalent have non-default values (all are named).
    Warns:
        UnsupportedD2KeysWarning: the same keys, when not strict.
    """
    if isinstance(cfg, DictConfig):
        return cfg
    if not _is_cfg_node(cfg):
        raise TypeError(f"to_detlightning_cfg expects a detectron2-style CfgNode, got {type(cfg).__name__}")
    flat = _flatten(cfg)
    base = _base_config(_group_choices(flat))
    unsupported = unsupported_d2_keys(cfg)
    updates: dict[str, Any] = {}
    for key, value in flat.items():
        target = D2_KEY_MAP.get(key)
        if target is None:
            continue
        if OmegaConf.select(base, target, default=_MISSING) is _MISSING:
            if not _is_default(key, value):
                unsupported[key] = f"{target} is not in this configuration"
            continue
        node = updates
        *parents, leaf = target.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _device(value) if key == "MODEL.DEVICE" else _plain(value)
    _report(unsupported, strict, flat, "detectron2 config")
    # one merge (lists are replaced, not merged); it returns a new config, the cached base stays untouched
    out = OmegaConf.merge(base, updates)
    assert isinstance(out, DictConfig)
    OmegaConf.set_struct(out, True)
    return out


def load_d2_config(path: str | os.PathLike[str], overrides: Sequence[str] | None = None,
                   strict: bool = False) -> DictConfig:
    """A detectron2 yaml file (``_BASE_`` chains followed) as detlightning's config.

    Args:
        path: the yaml file.
        overrides: detectron2-style ``["KEY", value, ...]`` pairs applied after the file (``merge_from_list``).
        strict: raise instead of warning when keys without equivalent have non-default values.
    """
    d2 = get_d2_cfg()
    d2.merge_from_file(os.fspath(path))
    if overrides:
        d2.merge_from_list(list(overrides))
    return to_detlightning_cfg(d2, strict=strict)


def command_line_keys(overrides: Sequence[str]) -> list[str]:
    """The config keys that Hydra-syntax ``overrides`` set (``solver.base_lr=0.01`` -> ``solver.base_lr``): what
    keeps its value when a ``d2_config`` file is applied. Group choices (``model=mask_rcnn``), deletions and
    ``d2_config`` itself are not keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .config import config_groups

    groups = config_groups()
    keys = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if override.is_delete() or key == "d2_config":
            continue
        if key in groups:
            if key in ("model", "backbone", "data"):
                logger.warning("d2_config is set: the detectron2 file decides the model and data; %s=%s only "
                               "contributes keys the file does not set", key, override.value())
            continue
        keys.append(key)
    return keys


def apply_d2_config(cfg: DictConfig, path: str | os.PathLike[str] | None = None,
                    keep: Sequence[str] | None = None, strict: bool = False) -> DictConfig:
    """``cfg`` with a detectron2 yaml applied: what ``scripts/train.py d2_config=path.yaml`` trains.

    The detectron2 file decides every setting it has an equivalent for in ``model``, ``input``, ``datasets``,
    ``dataloader``, ``solver``, ``test`` and ``seed`` (its defaults included, as in detectron2). Run settings stay
    as the Hydra launch composed them: ``trainer``, ``callbacks``, ``logger``, ``paths`` and keys without a
    detectron2 counterpart (e.g. ``datasets.shapes.*``, ``solver.optimizer``); ``OUTPUT_DIR``, ``MODEL.DEVICE``,
    ``CUDNN_BENCHMARK`` and ``TEST.PRECISE_BN`` apply only when the file sets a non-default value.

    Args:
        cfg: the composed Hydra config (not modified).
        path: the detectron2 yaml; default ``cfg.d2_config``.
        keep: keys of ``cfg`` whose values win over the file (e.g. ``["solver.base_lr"]``). Default: inside a
            Hydra app, the keys given on the command line (:func:`command_line_keys`); otherwise none.
        strict: raise instead of warning about keys without equivalent.
    """
    path = path if path is not None else OmegaConf.select(cfg, "d2_config")
    if not path:
        raise ValueError("apply_d2_config: no detectron2 config given (path=None and cfg.d2_config is not set)")
    d2 = get_d2_cfg()
    d2.merge_from_file(os.fspath(path))
    converted = to_detlightning_cfg(d2, strict=strict)
    keep = list(keep) if keep is not None else command_line_keys(hydra_task_overrides())

    result = copy.deepcopy(cfg)
    OmegaConf.set_struct(result, False)
    OmegaConf.set_struct(converted, False)
    # structure the d2 composition needs that the Hydra composition lacks (e.g. datasets.shapes); cfg wins
    for section in _D2_SECTIONS:
        if section in converted:
            merged = OmegaConf.merge(converted[section], result[section]) if section in result else converted[section]
            result[section] = merged
    for key, value in _flatten(d2).items():
        target = D2_KEY_MAP.get(key)
        if target is None or OmegaConf.select(converted, target, default=_MISSING) is _MISSING:
            continue
        if key in _RUN_LEVEL and _is_default(key, value):
            continue
        value = copy.deepcopy(OmegaConf.select(converted, target))
        OmegaConf.update(result, target, value, merge=False, force_add=True)
    for key in keep:
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is not _MISSING:
            value = value if not isinstance(value, (DictConfig, ListConfig)) else copy.deepcopy(value)
            OmegaConf.update(result, key, value, merge=False, force_add=True)
    OmegaConf.set_struct(result, True)
    logger.info("Applied detectron2 config %s%s", path, f" (these keep their values from cfg: {keep})" if keep else "")
    return result
