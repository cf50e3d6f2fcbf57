"""The RegNet LazyConfig models beyond their parity (test_lazy_parity.py compares keys, proposals and outputs
with detectron2's): the backbones are what the configs say, and the 1x configs' RegNets have the manifests' keys with
frozen BN, stem and s1."""
from __future__ import annotations

import pytest

from . import _parity as P
from .test_lazy_parity import _model  # the same cached models the parity tests build

ARCHS = ["mask_rcnn_regnety_4gf_dds_FPN", "mask_rcnn_regnetx_4gf_dds_FPN"]


@pytest.fixture(autouse=True)
def _need_compat(compat_dir):
    return compat_dir


def test_regnet_backbones_are_what_the_configs_say() -> None:
    y = _model("mask_rcnn_regnety_4gf_dds_FPN").backbone.bottom_up
    x = _model("mask_rcnn_regnetx_4gf_dds_FPN").backbone.bottom_up
    assert [len(list(s.children())) for s, _ in y.stages_and_names] == [2, 6, 12, 2]
    assert [len(list(s.children())) for s, _ in x.stages_and_names] == [2, 5, 14, 2]
    assert {k: v.channels for k, v in y.output_shape().items()} == {"s1": 128, "s2": 192, "s3": 512, "s4": 1088}
    assert {k: v.channels for k, v in x.output_shape().items()} == {"s1": 80, "s2": 240, "s3": 560, "s4": 1360}
    assert all(s.stride == 4 * 2**i for i, s in enumerate(y.output_shape().values()))
    assert y.s1.b1.f.se is not None and x.s1.b1.f.se is None


@pytest.mark.parametrize("arch", ARCHS)
def test_1x_config_has_the_same_regnet_frozen(arch: str) -> None:
    """COCO-InstanceSegmentation/mask_rcnn_regnet{x,y}_4gf_dds_fpn_1x.py: the same RegNet, frozen BN, stem and s1
    frozen, so that pycls ImageNet weights load into it."""
    from detlightning import model_zoo
    from detlightning.config import instantiate
    from detlightning.layers import FrozenBatchNorm2d

    name = "COCO-InstanceSegmentation/mask_rcnn_regnet{}_4gf_dds_fpn_1x.py".format(arch[len("mask_rcnn_regnet")])
    bottom_up = instantiate(model_zoo.get_config(name).model.backbone.bottom_up)
    ref = P.manifest(arch)["shapes"]
    prefix = "backbone.bottom_up."
    ref = {k[len(prefix) :]: v for k, v in ref.items() if k.startswith(prefix) and "num_batches_tracked" not in k}
    assert {k: list(v.shape) for k, v in bottom_up.state_dict().items()} == ref
    assert all(isinstance(m, FrozenBatchNorm2d) for m in bottom_up.modules() if "BatchNorm" in type(m).__name__)
    assert not any(p.requires_grad for p in [*bottom_up.stem.parameters(), *bottom_up.s1.parameters()])
    assert all(p.requires_grad for p in bottom_up.s2.parameters())
