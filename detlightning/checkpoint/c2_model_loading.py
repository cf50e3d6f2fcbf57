"""Caffe2 / Detectron1 weight names -> detectron2 names, and suffix matching of checkpoint keys to a model.

Caffe2 blobs are flat names such as ``res2_0_branch2a_bn_s``; :func:`convert_c2_detectron_names` turns them
into detectron2 module paths (``res2.0.conv1.norm.weight``) for ResNet backbones and the FPN, RPN,
Fast R-CNN, mask and keypoint heads of Detectron1 models. Converted (or model-zoo) names usually lack the
prefixes of the full model (``backbone.bottom_up.``); :func:`align_and_update_state_dicts` matches each
model key to the longest checkpoint key that is a dot-separated suffix of it.
"""
from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["convert_basic_c2_names", "convert_c2_detectron_names", "align_and_update_state_dicts"]

logger = logging.getLogger(__name__)

_Rule = tuple[str, str, bool]  # (pattern, replacement, is_regex)

# Applied in order after "_" -> "." (order matters: e.g. "bn.b" -> "bn.bias" -> "norm.bias").
_BASIC_RULES: list[_Rule] = [
    (r"\.b$", ".bias", True),
    (r"\.w$", ".weight", True),
    # batch norm and group norm parameters are all called "norm" in detectron2
    (r"bn\.s$", "norm.weight", True),
    (r"bn\.bias$", "norm.bias", True),
    (r"bn\.rm", "norm.running_mean", True),
    (r"bn\.running.mean$", "norm.running_mean", True),
    (r"bn\.riv$", "norm.running_var", True),
    (r"bn\.running.var$", "norm.running_var", True),
    (r"bn\.gamma$", "norm.weight", True),
    (r"bn\.beta$", "norm.bias", True),
    (r"gn\.s$", "norm.weight", True),
    (r"gn\.bias$", "norm.bias", True),
    # stem: res_conv1_bn_* is the stem's norm; anchor "conv1" at the start so head convs stay untouched
    (r"^res\.conv1\.norm\.", "conv1.norm.", True),
    (r"^conv1\.", "stem.conv1.", True),
    # residual blocks keep Caffe2's res2..res5 stage names; only the branches are renamed
    (".branch1.", ".shortcut.", False),
    (".branch2a.", ".conv1.", False),
    (".branch2b.", ".conv2.", False),
    (".branch2c.", ".conv3.", False),
    # DensePose heads
    (r"^body.conv.fcn", "body_conv_fcn", True),
    ("AnnIndex.lowres", "ann_index_lowres", False),
    ("Index.UV.lowres", "index_uv_lowres", False),
    ("U.lowres", "u_lowres", False),
    ("V.lowres", "v_lowres", False),
]

_RPN = "proposal_generator.rpn_head."
_DETECTRON_RULES_BEFORE_FPN: list[_Rule] = [
    # Detectron1 FPN models define the RPN head on level 2 ("fpn2") and share it across levels
    ("conv.rpn.fpn2", _RPN + "conv", False),
    ("conv.rpn", _RPN + "conv", False),
    ("rpn.bbox.pred.fpn2", _RPN + "anchor_deltas", False),
    ("rpn.cls.logits.fpn2", _RPN + "objectness_logits", False),
    ("rpn.bbox.pred", _RPN + "anchor_deltas", False),
    ("rpn.cls.logits", _RPN + "objectness_logits", False),
    # Fast R-CNN box head (2fc, or 4conv1fc with head_conv*)
    (r"^bbox\.pred", "bbox_pred", True),
    (r"^cls\.score", "cls_score", True),
    (r"^fc6\.", "box_head.fc1.", True),
    (r"^fc7\.", "box_head.fc2.", True),
    (r"^head\.conv", "box_head.conv", True),
]
_DETECTRON_RULES_AFTER_FPN: list[_Rule] = [
    # mask head: StandardROIHeads ("_[mask]_fcn1") and Res5ROIHeads ("conv5_mask")
    (".[mask].fcn", "mask_head.mask_fcn", False),
    (r"^\.mask\.fcn", "mask_head.mask_fcn", True),
    ("mask.fcn.logits", "mask_head.predictor", False),
    ("conv5.mask", "mask_head.deconv", False),
    # keypoint head convs are plainly "conv_fcnX" in Detectron1
    ("conv.fcn", "roi_heads.keypoint_head.conv_fcn", False),
    ("kps.score.lowres", "roi_heads.keypoint_head.score_lowres", False),
    ("kps.score.", "roi_heads.keypoint_head.score.", False),
]


def _apply_rules(keys: list[str], rules: Iterable[_Rule]) -> list[str]:
    for pattern, repl, is_regex in rules:
        if is_regex:
            rx = re.compile(pattern)
            keys = [rx.sub(repl, k) for k in keys]
        else:
            keys = [k.replace(pattern, repl) for k in keys]
    return keys


def convert_basic_c2_names(original_keys: list[str]) -> list[str]:
    """Rename Caffe2 backbone blob names to detectron2's (same length and order as ``original_keys``).

    ``conv1_w`` -> ``stem.conv1.weight``, ``res_conv1_bn_s`` -> ``stem.conv1.norm.weight``,
    ``res2_0_branch2a_bn_b`` -> ``res2.0.conv1.norm.bias``, ``res2_0_branch1_w`` -> ``res2.0.shortcut.weight``.
    """
    keys = [{"pred_b": "linear_b", "pred_w": "linear_w"}.get(k, k) for k in original_keys]
    keys = [k.replace("_", ".") for k in keys]
    return _apply_rules(keys, _BASIC_RULES)


def _fpn_name(name: str) -> str:
    """``fpn.inner.res4.5.sum.lateral.weight`` -> ``fpn_lateral4.weight``;
    ``fpn.res4.5.sum.bias`` -> ``fpn_output4.bias``."""
    parts = name.split(".")
    norm = ".norm" if "norm" in parts else ""
    if name.startswith("fpn.inner."):
        return f"fpn_lateral{int(parts[2][len('res'):])}{norm}.{parts[-1]}"
    if name.startswith("fpn.res"):
        return f"fpn_output{int(parts[1][len('res'):])}{norm}.{parts[-1]}"
    return name


def _concat(parts: list[Any]) -> Any:
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return np.concatenate(parts)


def convert_c2_detectron_names(weights: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Map Caffe2 Detectron weight names to detectron2 names.

    Args:
        weights: Caffe2 blob name -> tensor or numpy array.

    Returns:
        (detectron2 name -> value, detectron2 name -> original Caffe2 name). Box/mask predictors are
        adjusted for detectron2's class layout: the background rows of ``bbox_pred`` (first 4) and of the
        mask predictor (first 1) are dropped, and ``cls_score``'s background row moves from first to last.
    """
    logger.info("Remapping C2 weights ......")
    original_keys = sorted(weights.keys())
    keys = convert_basic_c2_names(original_keys)
    keys = _apply_rules(keys, _DETECTRON_RULES_BEFORE_FPN)
    keys = [_fpn_name(k) for k in keys]
    keys = _apply_rules(keys, _DETECTRON_RULES_AFTER_FPN)

    if len(set(keys)) != len(keys):
        clashes: dict[str, list[str]] = defaultdict(list)
        for orig, new in zip(original_keys, keys):
            clashes[new].append(orig)
        dup = {k: v for k, v in clashes.items() if len(v) > 1}
        raise ValueError(f"Caffe2 names collide after conversion (detectron2 name -> Caffe2 names): {dup}")

    new_weights: dict[str, Any] = {}
    new_to_original: dict[str, str] = {}
    for orig, new in zip(original_keys, keys):
        new_to_original[new] = orig
        value = weights[orig]
        # d2-parity: Detectron1 predicts background as class 0; detectron2 has no background box/mask
        # outputs and puts the background logit last.
        if new.startswith(("bbox_pred.", "mask_head.predictor.")):
            start = 4 if new.startswith("bbox_pred.") else 1
            new_weights[new] = value[start:]
            logger.info(
                "Remove prediction weight for background class in %s. The shape changes from %s to %s.",
                new, tuple(value.shape), tuple(new_weights[new].shape),
            )
        elif new.startswith("cls_score."):
            logger.info(
                "Move classification weights for background class in %s from index 0 to index %d.",
                new, value.shape[0] - 1,
            )
            new_weights[new] = _concat([value[1:], value[:1]])
        else:
            new_weights[new] = value
    return new_weights, new_to_original


def _dot_suffixes(key: str) -> Iterable[str]:
    """``a.b.c`` -> ``a.b.c``, ``b.c``, ``c`` (longest first)."""
    yield key
    pos = key.find(".")
    while pos >= 0:
        yield key[pos + 1 :]
        pos = key.find(".", pos + 1)


def align_and_update_state_dicts(
    model_state_dict: Mapping[str, Any], ckpt_state_dict: Mapping[str, Any], c2_conversion: bool = True
) -> dict[str, Any]:
    """Rename checkpoint keys to the model's keys by suffix matching.

    Each model key takes the longest checkpoint key that equals it or is a complete dot-separated suffix
    of it (``backbone.bottom_up.res2.0.conv1.weight`` takes ``res2.0.conv1.weight``, never
    ``conv1.weight`` when both exist; ``mesh_head.whatever_conv1`` does not take ``conv1``). With
    ``c2_conversion`` the checkpoint is first renamed by :func:`convert_c2_detectron_names`.

    Returns:
        A new state dict: matched values under model keys, unmatched checkpoint entries under their
        (converted) checkpoint names, so the loader reports them as unexpected. Shape mismatches are logged
        and left under their checkpoint names.

    Raises:
        ValueError: one checkpoint key matches two model keys (the mapping would be ambiguous).
    """
    if c2_conversion:
        ckpt_state_dict, original_keys = convert_c2_detectron_names(ckpt_state_dict)
    else:
        original_keys = {k: k for k in ckpt_state_dict}
    ckpt_keys = set(ckpt_state_dict)

    result: dict[str, Any] = {}
    matched: dict[str, str] = {}  # checkpoint key -> model key
    for key_model in sorted(model_state_dict):
        key_ckpt = next((s for s in _dot_suffixes(key_model) if s in ckpt_keys), None)
        if key_ckpt is None:
            continue
        value = ckpt_state_dict[key_ckpt]
        shape_model = tuple(model_state_dict[key_model].shape)
        if tuple(value.shape) != shape_model:
            logger.warning(
                "Shape of %s in checkpoint is %s, while shape of %s in model is %s.",
                key_ckpt, tuple(value.shape), key_model, shape_model,
            )
            logger.warning("%s will not be loaded. Please double check and see if this is desired.", key_ckpt)
            continue
        if key_ckpt in matched:
            raise ValueError(
                f"Ambiguous checkpoint key {key_ckpt!r}: it matches both {matched[key_ckpt]!r} and {key_model!r} "
                "in the model; rename the checkpoint keys so that each matches one model key."
            )
        matched[key_ckpt] = key_model
        result[key_model] = value

    if matched:
        logger.info(_matched_table({m: original_keys[c] for c, m in matched.items()}, model_state_dict))
    for key_ckpt in sorted(ckpt_keys - matched.keys()):
        result[key_ckpt] = ckpt_state_dict[key_ckpt]
    return result


def _common_module_prefix(names: list[str]) -> str:
    """Longest common dot-separated prefix, with trailing dot: ``["a.b.c", "a.b.d"]`` -> ``"a.b."``."""
    split = [n.split(".") for n in names]
    lo, hi = min(split), max(split)
    common = []
    for a, b in zip(lo[:-1], hi[:-1]):
        if a != b:
            break
        common.append(a)
    return ".".join(common) + "." if common else ""


def _common_str_prefix(names: list[str]) -> str:
    lo, hi = min(names), max(names)
    n = 0
    while n < min(len(lo), len(hi)) and lo[n] == hi[n]:
        n += 1
    return lo[:n]


def _format_table(rows: list[tuple[str, ...]], headers: tuple[str, ...]) -> str:
    """A markdown-style pipe table (no dependency on tabulate)."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    fmt: Callable[[tuple[str, ...]], str] = lambda r: "| " + " | ".join(  # noqa: E731
        str(c).ljust(w) for c, w in zip(r, widths)
    ) + " |"
    sep = "|:" + "|:".join("-" * (w + 1) for w in widths) + "|"
    return "\n".join([fmt(headers), sep, *(fmt(r) for r in rows)])


def _matched_table(model_to_ckpt: dict[str, str], model_state_dict: Mapping[str, Any]) -> str:
    """Log text listing which checkpoint names were loaded into which model keys.

    Keys of one submodule share a row (``res2.0.conv1.*  <- res2_0_branch2a_{bn_b,bn_s,w}``) when their
    checkpoint names share a prefix; the largest such submodule is used.
    """
    keys = sorted(model_to_ckpt)
    common = _common_module_prefix(keys) if len(keys) > 1 else keys[0].rpartition(".")[0] + "."
    common = "" if common == "." else common
    group_of: dict[str, list[str]] = {}
    # shortest module prefixes first, so a key joins the largest group that qualifies
    for prefix in sorted({k.rpartition(".")[0] + "." for k in keys if "." in k}, key=len):
        group = [k for k in keys if k.startswith(prefix)]
        if len(group) < 2 or not _common_str_prefix([model_to_ckpt[k] for k in group]):
            continue
        for k in group:
            group_of.setdefault(k, group)
    rows: list[tuple[str, ...]] = []
    done: set[str] = set()
    for key in keys:
        if key in done:
            continue
        group = group_of.get(key, [key])
        done.update(group)
        if len(group) == 1:
            rows.append((key[len(common) :], model_to_ckpt[key], str(tuple(model_state_dict[key].shape))))
            continue
        originals = [model_to_ckpt[k] for k in group]
        lcp = _common_str_prefix(originals)
        rest = ",".join(o[len(lcp) :] for o in originals)
        shapes = " ".join(str(tuple(model_state_dict[k].shape)).replace(" ", "") for k in group)
        rows.append((_common_module_prefix([k[len(common) :] for k in group]) + "*", f"{lcp}{{{rest}}}", shapes))
    where = f"submodule {common[:-1]}" if common else "model"
    return f"Following weights matched with {where}:\n" + _format_table(
        rows, ("Names in Model", "Names in Checkpoint", "Shapes")
    )
