from __future__ import annotations

import collections
import os.path

import pytest

from detlightning.modeling import registry as modeling_registry
from detlightning.utils.registry import Registry, locate


def test_decorator_and_call_forms_register_by_name():
    reg = Registry("TOY")

    @reg.register()
    class Alpha:
        pass

    def build_beta():
        return "beta"

    returned = reg.register(build_beta)
    assert returned is build_beta
    assert reg.get("Alpha") is Alpha  # the decorator returns the class unchanged
    assert Alpha.__name__ == "Alpha"
    assert reg.get("build_beta")() == "beta"
    assert "Alpha" in reg and "build_beta" in reg and "Gamma" not in reg
    assert len(reg) == 2
    assert list(reg) == [("Alpha", Alpha), ("build_beta", build_beta)]


def test_duplicate_name_raises_and_keeps_first():
    reg = Registry("TOY")

    @reg.register()
    class Thing:
        pass

    first = Thing

    with pytest.raises(ValueError, match=r"'Thing'.*'TOY'"):

        @reg.register()
        class Thing:
            pass

    assert reg.get("Thing") is first


def test_get_unknown_lists_sorted_names_and_registry():
    reg = Registry("ROI_HEADS")
    for n in ["zeta", "alpha", "mid"]:
        reg.register(type(n, (), {}))
    with pytest.raises(KeyError) as ei:
        reg.get("Nope")
    msg = str(ei.value)
    assert "'Nope'" in msg and "'ROI_HEADS'" in msg
    assert "alpha, mid, zeta" in msg


def test_register_rejects_nameless_objects():
    reg = Registry("TOY")
    with pytest.raises(TypeError, match="__name__"):
        reg.register(3)


def test_repr_is_a_table_of_names():
    reg = Registry("TOY")

    @reg.register()
    def some_builder():
        pass

    text = repr(reg)
    assert text.startswith("Registry of TOY:")
    assert "some_builder" in text and "Names" in text


def test_modeling_registries_have_detectron2_names():
    expected = {
        "BACKBONE_REGISTRY": "BACKBONE",
        "META_ARCH_REGISTRY": "META_ARCH",
        "PROPOSAL_GENERATOR_REGISTRY": "PROPOSAL_GENERATOR",
        "RPN_HEAD_REGISTRY": "RPN_HEAD",
        "ANCHOR_GENERATOR_REGISTRY": "ANCHOR_GENERATOR",
        "ROI_HEADS_REGISTRY": "ROI_HEADS",
        "ROI_BOX_HEAD_REGISTRY": "ROI_BOX_HEAD",
        "ROI_MASK_HEAD_REGISTRY": "ROI_MASK_HEAD",
        "ROI_KEYPOINT_HEAD_REGISTRY": "ROI_KEYPOINT_HEAD",
        "SEM_SEG_HEADS_REGISTRY": "SEM_SEG_HEADS",
    }
    seen = set()
    for attr, name in expected.items():
        reg = getattr(modeling_registry, attr)
        assert isinstance(reg, Registry)
        assert reg.name == name
        assert reg.__doc__ and "Called as" in reg.__doc__
        seen.add(id(reg))
    assert len(seen) == len(expected)  # ten distinct objects


def test_locate_resolves_modules_classes_and_attributes():
    assert locate("os.path") is os.path
    assert locate("os.path.join") is os.path.join
    assert locate("collections.OrderedDict.fromkeys") == collections.OrderedDict.fromkeys
    assert locate("detlightning.utils.registry.Registry") is Registry


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("os.path.no_such_function", "'os.path' has no attribute 'no_such_function'"),
        ("no_such_top_level_pkg_xyz.Thing", "no importable module prefix"),
        ("", "dotted import path"),
        ("os..path", "dotted import path"),
    ],
)
def test_locate_errors_are_clear(bad, fragment):
    with pytest.raises(ImportError) as ei:
        locate(bad)
    assert fragment in str(ei.value)
