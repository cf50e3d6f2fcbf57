"""Model-zoo lookups: name -> shipped detectron2 yaml, converted config, checkpoint URL, built model.

The yaml files under ``configs/`` are the model yaml files of detectron2's ``configs/`` folder (COCO, LVIS v0.5/v1,
Cityscapes, Pascal VOC, Detectron1 comparisons, Misc) with the ``Base-*`` files they build on: same keys and
hyper-parameters, ``_BASE_`` chains included. The ``.py`` files are LazyConfig files with the models and
schedules of detectron2's Python configs (``common/``, ``new_baselines/``, the ``COCO-*`` ``.py`` entries, and
ViTDet's ``projects/ViTDet/configs`` as ``ViTDet/``), written for detlightning.
Checkpoints are detectron2's released ``model_final_*.pkl`` files:
``DetectionCheckpointer`` downloads them into the cache (``$DETLIGHTNING_CACHE``, default
``~/.torch/detlightning_cache``); offline, the error names the URL and the local path to place the file at.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig
from torch import nn

from ..checkpoint import DetectionCheckpointer
from ..config import CfgNode, LazyConfig, get_d2_cfg, instantiate, to_detlightning_cfg
from ..modeling import build_model

__all__ = [
    "get",
    "get_checkpoint_url",
    "get_config",
    "get_config_file",
    "get_d2_config",
    "get_hydra_config",
    "list_configs",
]

logger = logging.getLogger(__name__)

_CONFIG_ROOT = Path(__file__).resolve().parent / "configs"


class _ModelZooUrls:
    """Released detectron2 checkpoints: ``<S3_PREFIX><name without extension>/<model id>/model_final_<hash>.pkl``."""

    S3_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"

    # config name (no extension) -> "<model id>/<file name>"
    CONFIG_PATH_TO_URL_SUFFIX: dict[str, str] = {
        # COCO detection: Faster R-CNN
        "COCO-Detection/faster_rcnn_R_50_C4_1x": "137257644/model_final_721ade.pkl",
        "COCO-Detection/faster_rcnn_R_50_DC5_1x": "137847829/model_final_51d356.pkl",
        "COCO-Detection/faster_rcnn_R_50_FPN_1x": "137257794/model_final_b275ba.pkl",
        "COCO-Detection/faster_rcnn_R_50_C4_3x": "137849393/model_final_f97cb7.pkl",
        "COCO-Detection/faster_rcnn_R_50_DC5_3x": "137849425/model_final_68d202.pkl",
        "COCO-Detection/faster_rcnn_R_50_FPN_3x": "137849458/model_final_280758.pkl",
        "COCO-Detection/faster_rcnn_R_101_C4_3x": "138204752/model_final_298dad.pkl",
        "COCO-Detection/faster_rcnn_R_101_DC5_3x": "138204841/model_final_3e0943.pkl",
        "COCO-Detection/faster_rcnn_R_101_FPN_3x": "137851257/model_final_f6e8b1.pkl",
        "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x": "139173657/model_final_68b088.pkl",
        # COCO detection: RetinaNet
        "COCO-Detection/retinanet_R_50_FPN_1x": "190397773/model_final_bfca0b.pkl",
        "COCO-Detection/retinanet_R_50_FPN_3x": "190397829/model_final_5bd44e.pkl",
        "COCO-Detection/retinanet_R_101_FPN_3x": "190397697/model_final_971ab9.pkl",
        # COCO detection: RPN and Fast R-CNN
        "COCO-Detection/rpn_R_50_C4_1x": "137258005/model_final_450694.pkl",
        "COCO-Detection/rpn_R_50_FPN_1x": "137258492/model_final_02ce48.pkl",
        "COCO-Detection/fast_rcnn_R_50_FPN_1x": "137635226/model_final_e5f7ce.pkl",
        # COCO instance segmentation: Mask R-CNN
        "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x": "137259246/model_final_9243eb.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_1x": "137260150/model_final_4f86c3.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x": "137260431/model_final_a54504.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_3x": "137849525/model_final_4ce675.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_3x": "137849551/model_final_84107b.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x": "137849600/model_final_f10217.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_101_C4_3x": "138363239/model_final_a2914c.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_101_DC5_3x": "138363294/model_final_0464b7.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x": "138205316/model_final_a3ec72.pkl",
        "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x": "139653917/model_final_2d9806.pkl",
        # new baselines (LazyConfig .py files, not shipped): large-scale jitter, longer schedules
        "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ": "42047764/model_final_bb69de.pkl",
        "new_baselines/mask_rcnn_R_50_FPN_200ep_LSJ": "42047638/model_final_89a8d3.pkl",
        "new_baselines/mask_rcnn_R_50_FPN_400ep_LSJ": "42019571/model_final_14d201.pkl",
        "new_baselines/mask_rcnn_R_101_FPN_100ep_LSJ": "42025812/model_final_4f7b58.pkl",
        "new_baselines/mask_rcnn_R_101_FPN_200ep_LSJ": "42131867/model_final_0bb7ae.pkl",
        "new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ": "42073830/model_final_f96b26.pkl",
        "new_baselines/mask_rcnn_regnetx_4gf_dds_FPN_100ep_LSJ": "42047771/model_final_b7fbab.pkl",
        "new_baselines/mask_rcnn_regnetx_4gf_dds_FPN_200ep_LSJ": "42132721/model_final_5d87c1.pkl",
        "new_baselines/mask_rcnn_regnetx_4gf_dds_FPN_400ep_LSJ": "42025447/model_final_f1362d.pkl",
        "new_baselines/mask_rcnn_regnety_4gf_dds_FPN_100ep_LSJ": "42047784/model_final_6ba57e.pkl",
        "new_baselines/mask_rcnn_regnety_4gf_dds_FPN_200ep_LSJ": "42047642/model_final_27b9c1.pkl",
        "new_baselines/mask_rcnn_regnety_4gf_dds_FPN_400ep_LSJ": "42045954/model_final_ef3a80.pkl",
        # COCO person keypoints: Keypoint R-CNN
        "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x": "137261548/model_final_04e291.pkl",
        "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x": "137849621/model_final_a6e10b.pkl",
        "COCO-Keypoints/keypoint_rcnn_R_101_FPN_3x": "138363331/model_final_997cc7.pkl",
        "COCO-Keypoints/keypoint_rcnn_X_101_32x8d_FPN_3x": "139686956/model_final_5ad38f.pkl",
        # COCO panoptic segmentation: Panoptic FPN
        "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x": "139514544/model_final_dbfeb4.pkl",
        "COCO-PanopticSegmentation/panoptic_fpn_R_50_3x": "139514569/model_final_c10459.pkl",
        "COCO-PanopticSegmentation/panoptic_fpn_R_101_3x": "139514519/model_final_cafdb1.pkl",
        # LVIS v0.5, Cityscapes, Pascal VOC
        "LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x": "144219072/model_final_571f7c.pkl",
        "LVISv0.5-InstanceSegmentation/mask_rcnn_R_101_FPN_1x": "144219035/model_final_824ab5.pkl",
        "LVISv0.5-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x": "144219108/model_final_5e3439.pkl",
        "Cityscapes/mask_rcnn_R_50_FPN": "142423278/model_final_af9cf5.pkl",
        "PascalVOC-Detection/faster_rcnn_R_50_C4": "142202221/model_final_b1acc2.pkl",
        # other settings
        "Misc/mask_rcnn_R_50_FPN_1x_dconv_c3-c5": "138602867/model_final_65c703.pkl",
        "Misc/mask_rcnn_R_50_FPN_3x_dconv_c3-c5": "144998336/model_final_821d0b.pkl",
        "Misc/cascade_mask_rcnn_R_50_FPN_1x": "138602847/model_final_e9d89b.pkl",
        "Misc/cascade_mask_rcnn_R_50_FPN_3x": "144998488/model_final_480dd8.pkl",
        "Misc/mask_rcnn_R_50_FPN_3x_syncbn": "169527823/model_final_3b3c51.pkl",
        "Misc/mask_rcnn_R_50_FPN_3x_gn": "138602888/model_final_dc5d9e.pkl",
        "Misc/scratch_mask_rcnn_R_50_FPN_3x_gn": "138602908/model_final_01ca85.pkl",
        "Misc/scratch_mask_rcnn_R_50_FPN_9x_gn": "183808979/model_final_da7b4c.pkl",
        "Misc/scratch_mask_rcnn_R_50_FPN_9x_syncbn": "184226666/model_final_5ce33e.pkl",
        "Misc/panoptic_fpn_R_101_dconv_cascade_gn_3x": "139797668/model_final_be35db.pkl",
        "Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv": "18131413/model_0039999_e76410.pkl",
        # Detectron1 comparisons
        "Detectron1-Comparisons/faster_rcnn_R_50_FPN_noaug_1x": "137781054/model_final_7ab50c.pkl",
        "Detectron1-Comparisons/mask_rcnn_R_50_FPN_noaug_1x": "137781281/model_final_62ca52.pkl",
        "Detectron1-Comparisons/keypoint_rcnn_R_50_FPN_1x": "137781195/model_final_cce136.pkl",
    }

    # ViTDet's released models live under a folder named without the schedule: config name -> path under S3_PREFIX
    VITDET_CONFIG_TO_PATH: dict[str, str] = {
        f"ViTDet/COCO/{config}": f"ViTDet/COCO/{folder}/f{model_id}/model_final_{digest}.pkl"
        for config, folder, model_id, digest in [
            ("mask_rcnn_vitdet_b_100ep", "mask_rcnn_vitdet_b", 325346929, "61ccd1"),
            ("mask_rcnn_vitdet_l_100ep", "mask_rcnn_vitdet_l", 325599698, "6146ed"),
            ("mask_rcnn_vitdet_h_75ep", "mask_rcnn_vitdet_h", 329145471, "7224f1"),
            ("cascade_mask_rcnn_vitdet_b_100ep", "cascade_mask_rcnn_vitdet_b", 325358525, "435fa9"),
            ("cascade_mask_rcnn_vitdet_l_100ep", "cascade_mask_rcnn_vitdet_l", 328021305, "1a9f28"),
            ("cascade_mask_rcnn_vitdet_h_75ep", "cascade_mask_rcnn_vitdet_h", 328730692, "f05665"),
            ("cascade_mask_rcnn_swin_b_in21k_50ep", "cascade_mask_rcnn_swin_b_in21k", 342979038, "246a82"),
            ("cascade_mask_rcnn_swin_l_in21k_50ep", "cascade_mask_rcnn_swin_l_in21k", 342979186, "7c897e"),
            ("cascade_mask_rcnn_mvitv2_b_in21k_100ep", "cascade_mask_rcnn_mvitv2_b_in21k", 325820315, "8c3da3"),
            ("cascade_mask_rcnn_mvitv2_l_in21k_50ep", "cascade_mask_rcnn_mvitv2_l_in21k", 325607715, "2141b0"),
            ("cascade_mask_rcnn_mvitv2_h_in21k_36ep", "cascade_mask_rcnn_mvitv2_h_in21k", 326187358, "2234d7"),
        ]
    }

    @classmethod
    def query(cls, config_path: str) -> str | None:
        """The checkpoint URL for a config name (with or without ``.yaml`` / ``.py``), or None."""
        name = _strip_extension(_canonical_name(config_path))
        if name in cls.VITDET_CONFIG_TO_PATH:
            return cls.S3_PREFIX + cls.VITDET_CONFIG_TO_PATH[name]
        suffix = cls.CONFIG_PATH_TO_URL_SUFFIX.get(name)
        return None if suffix is None else f"{cls.S3_PREFIX}{name}/{suffix}"


# ViTDet's configs live in detectron2's projects/ViTDet/configs; here they ship as model_zoo/configs/ViTDet.
_VITDET_PROJECT_PREFIX = "projects/ViTDet/configs/"


def _canonical_name(config_path: str) -> str:
    if config_path.startswith(_VITDET_PROJECT_PREFIX):
        return "ViTDet/" + config_path[len(_VITDET_PROJECT_PREFIX) :]
    return config_path


def _strip_extension(config_path: str) -> str:
    for ext in (".yaml", ".py"):
        if config_path.endswith(ext):
            return config_path[: -len(ext)]
    return config_path


def list_configs() -> list[str]:
    """The config names shipped with detlightning (``"COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"``,
    ``"new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"``, ...), without the ``Base-*`` yaml files and the
    ``common/`` LazyConfig parts the others build on."""
    names = [p.relative_to(_CONFIG_ROOT).as_posix() for p in _CONFIG_ROOT.rglob("*") if p.suffix in (".yaml", ".py")]
    return sorted(n for n in names if not Path(n).name.startswith("Base-") and "common/" not in n)


def get_checkpoint_url(config_path: str) -> str:
    """URL of detectron2's released model trained with ``config_path``
    (e.g. ``"COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"``).

    Raises:
        RuntimeError: no released model for that name (detectron2 raises the same type).
    """
    url = _ModelZooUrls.query(config_path)
    if url is None:
        raise RuntimeError(
            f"No pretrained model for {config_path!r} in the model zoo. Known names: {_names_with_checkpoints()}"
        )
    return url


def _names_with_checkpoints() -> list[str]:
    """The shipped config names (with their extension) that have a released checkpoint."""
    return [n for n in list_configs() if _ModelZooUrls.query(n) is not None]


def get_config_file(config_path: str) -> str:
    """Absolute path of the shipped detectron2 yaml for ``config_path``.

    Raises:
        RuntimeError: not shipped (the message lists what is).
    """
    name = _canonical_name(config_path)
    name = name if name.endswith((".yaml", ".py")) else name + ".yaml"
    path = _CONFIG_ROOT / name
    if ".." in Path(name).parts or not path.is_file():
        raise RuntimeError(f"{config_path!r} is not available in the model zoo. Available: {list_configs()}")
    return str(path)


def get_config(config_path: str, trained: bool = False) -> CfgNode | DictConfig:
    """The model-zoo config, as ``detectron2.model_zoo.get_config`` returns it: a ``CfgNode`` for a ``.yaml`` name,
    the LazyConfig ``DictConfig`` (``model``, ``dataloader``, ``optimizer``, ``lr_multiplier``, ``train``) for a
    ``.py`` name.

    Args:
        trained: set ``MODEL.WEIGHTS`` / ``train.init_checkpoint`` to the released trained model instead of the
            file's ImageNet backbone.
    """
    if _canonical_name(config_path).endswith(".py"):
        cfg = LazyConfig.load(get_config_file(config_path))
        if trained:
            if "train" not in cfg or "init_checkpoint" not in cfg.train:
                raise ValueError(f"{config_path} has no train.init_checkpoint to set the trained weights in")
            cfg.train.init_checkpoint = get_checkpoint_url(config_path)
        return cfg
    cfg = get_d2_cfg()
    cfg.merge_from_file(get_config_file(config_path))
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_url(config_path)
    return cfg


get_d2_config = get_config  # the name earlier detlightning versions used for the CfgNode


def get_hydra_config(config_path: str, trained: bool = False) -> DictConfig:
    """The model-zoo config converted to detlightning's Hydra config (``model.weights`` is the trained model's
    URL when ``trained``, else the file's ImageNet backbone), e.g. to train it with the Lightning engine.
    For yaml names only: a LazyConfig ``.py`` name is already an OmegaConf config (:func:`get_config`)."""
    if _canonical_name(config_path).endswith(".py"):
        raise ValueError(f"{config_path} is a LazyConfig file: use get_config() (it is already a DictConfig)")
    return to_detlightning_cfg(get_config(config_path, trained=trained))


def get(config_path: str, trained: bool = False, device: str | None = None) -> nn.Module:
    """A model-zoo model, as in detectron2: built from the config and loaded with ``model.weights`` (the released
    trained model when ``trained``, else the ImageNet backbone the config names). In training mode.

    Args:
        device: e.g. ``"cpu"``; default: ``"cuda"`` when available, else ``"cpu"``.

    Raises:
        FileNotFoundError: the checkpoint is not cached and cannot be downloaded; the message names the URL and
            the local path to place the file at.
    """
    import torch

    cfg = get_config(config_path, trained=trained)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(cfg, DictConfig):  # LazyConfig
        model = instantiate(cfg.model).to(device)
        init = cfg.get("train", {}).get("init_checkpoint", "")
        if init:
            DetectionCheckpointer(model).load(init)
        else:
            logger.warning("%s names no train.init_checkpoint: the model is randomly initialised", config_path)
        return model
    cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    weights = cfg.MODEL.WEIGHTS
    if weights:
        DetectionCheckpointer(model).load(weights)
    else:
        logger.warning("%s names no weights: the model is randomly initialised", config_path)
    return model
