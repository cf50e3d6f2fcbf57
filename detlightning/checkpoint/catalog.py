"""Names of third-party (Caffe2 Detectron1 / MSRA ImageNet) checkpoints, resolved from ``catalog://`` paths.

``catalog://ImageNetPretrained/MSRA/R-50`` and ``catalog://Caffe2Detectron/COCO/<id>/<name>`` resolve to the
download URLs detectron2's ``ModelCatalog`` uses, so configs written for detectron2 keep working.
"""
from __future__ import annotations

__all__ = ["ModelCatalog"]


class ModelCatalog:
    """Map catalog names to the URLs of Detectron1-era checkpoints.

    The MSRA ImageNet models expect ``STRIDE_IN_1X1=True`` and ``PIXEL_STD=[1, 1, 1]``; their batch-norm
    statistics are folded into scale/bias, so they belong in a model with frozen batch norm.
    """

    S3_C2_DETECTRON_PREFIX = "https://dl.fbaipublicfiles.com/detectron"

    C2_IMAGENET_MODELS: dict[str, str] = {
        "MSRA/R-50": "ImageNetPretrained/MSRA/R-50.pkl",
        "MSRA/R-101": "ImageNetPretrained/MSRA/R-101.pkl",
        "FAIR/R-50-GN": "ImageNetPretrained/47261647/R-50-GN.pkl",
        "FAIR/R-101-GN": "ImageNetPretrained/47592356/R-101-GN.pkl",
        "FAIR/X-101-32x8d": "ImageNetPretrained/20171220/X-101-32x8d.pkl",
        "FAIR/X-101-64x4d": "ImageNetPretrained/FBResNeXt/X-101-64x4d.pkl",
        "FAIR/X-152-32x8d-IN5k": "ImageNetPretrained/25093814/X-152-32x8d-IN5k.pkl",
    }

    C2_DETECTRON_PATH_FORMAT = "{prefix}/{url}/output/train/{dataset}/{type}/model_final.pkl"
    C2_DATASET_COCO = "coco_2014_train%3Acoco_2014_valminusminival"
    C2_DATASET_COCO_KEYPOINTS = "keypoints_coco_2014_train%3Akeypoints_coco_2014_valminusminival"

    # model name -> the run-specific part of its URL
    C2_DETECTRON_MODELS: dict[str, str] = {
        "35857197/e2e_faster_rcnn_R-50-C4_1x": "35857197/12_2017_baselines/e2e_faster_rcnn_R-50-C4_1x.yaml.01_33_49.iAX0mXvW",  # noqa: E501
        "35857345/e2e_faster_rcnn_R-50-FPN_1x": "35857345/12_2017_baselines/e2e_faster_rcnn_R-50-FPN_1x.yaml.01_36_30.cUF7QR7I",  # noqa: E501
        "35857890/e2e_faster_rcnn_R-101-FPN_1x": "35857890/12_2017_baselines/e2e_faster_rcnn_R-101-FPN_1x.yaml.01_38_50.sNxI7sX7",  # noqa: E501
        "36761737/e2e_faster_rcnn_X-101-32x8d-FPN_1x": "36761737/12_2017_baselines/e2e_faster_rcnn_X-101-32x8d-FPN_1x.yaml.06_31_39.5MIHi1fZ",  # noqa: E501
        "35858791/e2e_mask_rcnn_R-50-C4_1x": "35858791/12_2017_baselines/e2e_mask_rcnn_R-50-C4_1x.yaml.01_45_57.ZgkA7hPB",  # noqa: E501
        "35858933/e2e_mask_rcnn_R-50-FPN_1x": "35858933/12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml.01_48_14.DzEQe4wC",  # noqa: E501
        "35861795/e2e_mask_rcnn_R-101-FPN_1x": "35861795/12_2017_baselines/e2e_mask_rcnn_R-101-FPN_1x.yaml.02_31_37.KqyEK4tT",  # noqa: E501
        "36761843/e2e_mask_rcnn_X-101-32x8d-FPN_1x": "36761843/12_2017_baselines/e2e_mask_rcnn_X-101-32x8d-FPN_1x.yaml.06_35_59.RZotkLKI",  # noqa: E501
        "48616381/e2e_mask_rcnn_R-50-FPN_2x_gn": "GN/48616381/04_2018_gn_baselines/e2e_mask_rcnn_R-50-FPN_2x_gn_0416.13_23_38.bTlTI97Q",  # noqa: E501
        "37697547/e2e_keypoint_rcnn_R-50-FPN_1x": "37697547/12_2017_baselines/e2e_keypoint_rcnn_R-50-FPN_1x.yaml.08_42_54.kdzV35ao",  # noqa: E501
        "35998355/rpn_R-50-C4_1x": "35998355/12_2017_baselines/rpn_R-50-C4_1x.yaml.08_00_43.njH5oD9L",
        "35998814/rpn_R-50-FPN_1x": "35998814/12_2017_baselines/rpn_R-50-FPN_1x.yaml.08_06_03.Axg0r179",
        "36225147/fast_R-50-FPN_1x": "36225147/12_2017_baselines/fast_rcnn_R-50-FPN_1x.yaml.08_39_09.L3obSdQ2",
    }

    @classmethod
    def get(cls, name: str) -> str:
        """URL for a catalog name such as ``ImageNetPretrained/MSRA/R-50``."""
        if name.startswith("Caffe2Detectron/COCO/"):
            return cls._c2_detectron_baseline(name[len("Caffe2Detectron/COCO/") :])
        if name.startswith("ImageNetPretrained/"):
            key = name[len("ImageNetPretrained/") :]
            if key not in cls.C2_IMAGENET_MODELS:
                raise KeyError(f"unknown ImageNet model {name!r}; known: {sorted(cls.C2_IMAGENET_MODELS)}")
            return f"{cls.S3_C2_DETECTRON_PREFIX}/{cls.C2_IMAGENET_MODELS[key]}"
        raise KeyError(
            f"model {name!r} is not in the catalog; expected 'ImageNetPretrained/...' or 'Caffe2Detectron/COCO/...'"
        )

    @classmethod
    def _c2_detectron_baseline(cls, name: str) -> str:
        if name not in cls.C2_DETECTRON_MODELS:
            raise KeyError(f"unknown Detectron1 model {name!r}; known: {sorted(cls.C2_DETECTRON_MODELS)}")
        dataset = cls.C2_DATASET_COCO_KEYPOINTS if "keypoint_rcnn" in name else cls.C2_DATASET_COCO
        # the single RPN-only C4 baseline was trained under a different output directory
        kind = "rpn" if "35998355/rpn_R-50-C4_1x" in name else "generalized_rcnn"
        return cls.C2_DETECTRON_PATH_FORMAT.format(
            prefix=cls.S3_C2_DETECTRON_PREFIX, url=cls.C2_DETECTRON_MODELS[name], dataset=dataset, type=kind
        )
