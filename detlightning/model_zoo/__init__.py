"""detectron2's model zoo by name (``detectron2.model_zoo``): configs shipped with the package, checkpoint URLs, and
``get(name, trained=True)`` for a ready model. Names are detectron2's config paths, e.g.
``"COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"``."""
from .model_zoo import (
    get,
    get_checkpoint_url,
    get_config,
    get_config_file,
    get_d2_config,
    get_hydra_config,
    list_configs,
)

__all__ = [
    "get",
    "get_checkpoint_url",
    "get_config",
    "get_config_file",
    "get_d2_config",
    "get_hydra_config",
    "list_configs",
]
