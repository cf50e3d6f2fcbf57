"""Fast R-CNN box predictor: per-ROI class scores and box deltas, their losses, and test-time post-processing.

Shape shorthand: N images, R ROIs over the whole batch, Ri ROIs in image i, K foreground classes (the classifier has
K + 1 outputs, the last one being background), B the box dimension (4 for XYXY boxes).
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...config import configurable
from ...config.reader import cfg_view
from ...layers import ShapeSpec, batched_nms, cat, cross_entropy, nonzero_tuple
from ...layers.wrappers import is_exporting
from ...structures import Boxes, Instances
from ...utils.events import get_event_storage
from ..box_regression import Box2BoxTransform, _dense_box_regression_loss

__all__ = ["fast_rcnn_inference", "fast_rcnn_inference_single_image", "FastRCNNOutputLayers"]

logger = logging.getLogger(__name__)

_LOSS_KEYS = ("loss_cls", "loss_box_reg")


def fast_rcnn_inference(
    boxes: list[torch.Tensor],
    scores: list[torch.Tensor],
    image_shapes: list[tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> tuple[list[Instances], list[torch.Tensor]]:
    """Threshold, clip, per-class NMS and top-k for every image of a batch.

    Args:
        boxes: per image, (Ri, K * 4) class-specific or (Ri, 4) class-agnostic predicted XYXY boxes
            (what :meth:`FastRCNNOutputLayers.predict_boxes` returns).
        scores: per image, (Ri, K + 1) class probabilities, background last (:meth:`predict_probs`).
        image_shapes: per image, (height, width) to clip boxes to.
        score_thresh: keep (box, class) pairs whose score is strictly greater than this.
        nms_thresh: IoU threshold of the per-class NMS.
        topk_per_image: keep at most this many detections per image; < 0 keeps all.

    Returns:
        per image an :class:`Instances` with ``pred_boxes`` (Boxes), ``scores`` (float), ``pred_classes`` (long),
        sorted by decreasing score; and per image the long tensor of the ROI index (in [0, Ri)) of each detection.
    """
    results = [
        fast_rcnn_inference_single_image(b, s, shape, score_thresh, nms_thresh, topk_per_image)
        for b, s, shape in zip(boxes, scores, image_shapes)
    ]
    return [r[0] for r in results], [r[1] for r in results]


def fast_rcnn_inference_single_image(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_shape: tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> tuple[Instances, torch.Tensor]:
    """:func:`fast_rcnn_inference` for one image: boxes (R, K * 4) or (R, 4), scores (R, K + 1)."""
    # Rows with a non-finite box or score would poison NMS; drop them (the kept indices then refer to the
    # remaining rows, as in detectron2).
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    # a traced or exported graph cannot branch on the data: always filter
    if torch.jit.is_tracing() or is_exporting() or not bool(valid.all()):
        boxes, scores = boxes[valid], scores[valid]

    scores = scores[:, :-1]  # drop background
    num_bbox_reg_classes = boxes.shape[1] // 4
    boxes = boxes.reshape(-1, num_bbox_reg_classes, 4)

    # 1. Score threshold first: everything after it runs on the (few) surviving (ROI, class) pairs.
    filter_mask = scores > score_thresh  # (R, K)
    filter_inds = filter_mask.nonzero()  # (R', 2): ROI index, class index, in row-major order
    if num_bbox_reg_classes == 1:
        boxes = boxes[filter_inds[:, 0], 0]
    else:
        boxes = boxes[filter_mask]
    scores = scores[filter_mask]

    # 2. Clip to the image. Clipping is element-wise, so clipping only the survivors gives the same numbers as
    #    detectron2's clip-everything-first.
    boxes = Boxes(boxes)
    boxes.clip(image_shape)
    boxes = boxes.tensor

    # 3. NMS per class, 4. top-k by score (batched_nms returns indices sorted by decreasing score).
    keep = batched_nms(boxes, scores, filter_inds[:, 1], nms_thresh)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    roi_idx, class_idx = filter_inds[keep].unbind(dim=1)
    detections = Instances(image_shape, pred_boxes=Boxes(boxes[keep]), scores=scores[keep], pred_classes=class_idx)
    return detections, roi_idx


def _log_classification_stats(pred_logits: torch.Tensor, gt_classes: torch.Tensor, prefix: str = "fast_rcnn") -> None:
    """Put ``{prefix}/cls_accuracy``, ``fg_cls_accuracy`` and ``false_negative`` into the event storage.

    pred_logits: (R, K + 1), background last; gt_classes: (R,) long in [0, K] (or -1 for ignored).
    """
    num_instances = gt_classes.numel()
    if num_instances == 0:
        return
    pred_classes = pred_logits.argmax(dim=1)
    bg_class_ind = pred_logits.shape[1] - 1

    fg_inds = (gt_classes >= 0) & (gt_classes < bg_class_ind)
    num_fg = int(fg_inds.sum().item())
    fg_gt_classes = gt_classes[fg_inds]
    fg_pred_classes = pred_classes[fg_inds]

    num_false_negative = int((fg_pred_classes == bg_class_ind).sum().item())
    num_accurate = int((pred_classes == gt_classes).sum().item())
    fg_num_accurate = int((fg_pred_classes == fg_gt_classes).sum().item())

    storage = get_event_storage()
    storage.put_scalar(f"{prefix}/cls_accuracy", num_accurate / num_instances)
    if num_fg > 0:
        storage.put_scalar(f"{prefix}/fg_cls_accuracy", fg_num_accurate / num_fg)
        storage.put_scalar(f"{prefix}/false_negative", num_false_negative / num_fg)


def _fed_loss_cls_weights_from_datasets(dataset_names: Sequence[str], freq_weight_power: float) -> torch.Tensor:
    """(K,) federated-loss class weights ``image_count ** freq_weight_power`` from the training datasets' metadata
    ``class_image_count`` (LVIS datasets read it from their json)."""
    if not dataset_names:
        raise ValueError("MODEL.ROI_BOX_HEAD.USE_FED_LOSS needs DATASETS.TRAIN: the class weights come from the "
                         "training datasets' category image counts")
    # a model built from a config reads the training datasets' statistics when it is constructed, as detectron2's
    # from_config does (the one arrow from modeling to data; tests/test_import_layering.py names it)
    from ...data.detection_utils import get_fed_loss_cls_weights

    return get_fed_loss_cls_weights(list(dataset_names), freq_weight_power)


class FastRCNNOutputLayers(nn.Module):
    """Two linear layers on per-ROI features: ``cls_score`` (K + 1 logits) and ``bbox_pred`` (K * B or B deltas)."""

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec | int,
        *,
        box2box_transform: Box2BoxTransform,
        num_classes: int,
        test_score_thresh: float = 0.0,
        test_nms_thresh: float = 0.5,
        test_topk_per_image: int = 100,
        cls_agnostic_bbox_reg: bool = False,
        smooth_l1_beta: float = 0.0,
        box_reg_loss_type: str = "smooth_l1",
        loss_weight: float | Mapping[str, float] = 1.0,
        use_fed_loss: bool = False,
        use_sigmoid_ce: bool = False,
        get_fed_loss_cls_weights: Callable[[], torch.Tensor] | None = None,
        fed_loss_num_classes: int = 50,
    ) -> None:
        """
        Args:
            input_shape: shape of the per-ROI feature (channels * height * width inputs), or a channel count.
            box2box_transform: encodes/decodes deltas; its ``weights`` length is the box dimension B.
            num_classes: number of foreground classes K.
            test_score_thresh / test_nms_thresh / test_topk_per_image: see :func:`fast_rcnn_inference`.
            cls_agnostic_bbox_reg: predict one box per ROI instead of one per class.
            smooth_l1_beta: transition point of the smooth-L1 box loss (``box_reg_loss_type == "smooth_l1"``).
            box_reg_loss_type: "smooth_l1", "giou", "diou" or "ciou".
            loss_weight: one weight for both losses, or a dict with keys "loss_cls" / "loss_box_reg"
                (missing keys weigh 1).
            use_fed_loss: federated loss (needs ``use_sigmoid_ce``): the classification loss only covers the
                classes present in the batch plus negatives sampled by frequency.
            use_sigmoid_ce: per-class binary cross entropy instead of softmax cross entropy (scores become
                sigmoids at test time).
            get_fed_loss_cls_weights: called once when ``use_fed_loss``; returns the (K,) sampling weights of the
                classes (e.g. ``detlightning.data.detection_utils.get_fed_loss_cls_weights`` bound to a dataset).
            fed_loss_num_classes: number of classes the federated loss covers in total.
        """
        super().__init__()
        if isinstance(input_shape, int):
            input_shape = ShapeSpec(channels=input_shape)
        if not isinstance(input_shape, ShapeSpec) or not input_shape.channels:
            raise ValueError(
                f"FastRCNNOutputLayers: input_shape must be a ShapeSpec with channels, got {input_shape!r}"
            )
        self.num_classes = num_classes
        # a spatial input is flattened: the linear layers see C * H * W features
        flat_size = input_shape.channels
        for extent in (input_shape.height, input_shape.width):
            flat_size *= extent or 1
        deltas_per_roi = len(box2box_transform.weights) * (1 if cls_agnostic_bbox_reg else num_classes)
        self.cls_score = nn.Linear(flat_size, num_classes + 1)  # +1: the last logit is background
        self.bbox_pred = nn.Linear(flat_size, deltas_per_roi)
        for layer, std in ((self.cls_score, 0.01), (self.bbox_pred, 0.001)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.constant_(layer.bias, 0)

        self.box2box_transform = box2box_transform
        self.smooth_l1_beta = smooth_l1_beta
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        self.test_topk_per_image = test_topk_per_image
        self.box_reg_loss_type = box_reg_loss_type
        if isinstance(loss_weight, (int, float)):
            loss_weight = {k: float(loss_weight) for k in _LOSS_KEYS}
        elif isinstance(loss_weight, Mapping):
            # other keys are allowed: subclasses that add losses weigh them through the same dict
            loss_weight = dict(loss_weight)
        else:
            raise TypeError(f"loss_weight must be a float or a dict, got {type(loss_weight).__name__}")
        self.loss_weight = loss_weight

        self.use_fed_loss = use_fed_loss
        self.use_sigmoid_ce = use_sigmoid_ce
        self.fed_loss_num_classes = fed_loss_num_classes
        if self.use_fed_loss:
            if not self.use_sigmoid_ce:
                raise ValueError("FastRCNNOutputLayers: use_fed_loss=True requires use_sigmoid_ce=True")
            if get_fed_loss_cls_weights is None:
                raise ValueError(
                    "FastRCNNOutputLayers: use_fed_loss=True needs get_fed_loss_cls_weights, a callable returning the "
                    "(num_classes,) class sampling weights, e.g. functools.partial(detlightning.data.detection_utils."
                    "get_fed_loss_cls_weights, dataset_names, freq_weight_power)"
                )
            fed_loss_cls_weights = torch.as_tensor(get_fed_loss_cls_weights(), dtype=torch.float32)
            if fed_loss_cls_weights.shape != (self.num_classes,):
                raise ValueError(
                    f"fed_loss_cls_weights must have shape ({self.num_classes},), "
                    f"got {tuple(fed_loss_cls_weights.shape)}"
                )
            self.register_buffer("fed_loss_cls_weights", fed_loss_cls_weights)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec) -> dict:
        cfg = cfg_view(cfg)
        box_head = cfg.model.roi_box_head
        ret = {
            "input_shape": input_shape,
            "box2box_transform": Box2BoxTransform(weights=tuple(box_head.bbox_reg_weights)),
            "num_classes": cfg.model.roi_heads.num_classes,
            "cls_agnostic_bbox_reg": box_head.cls_agnostic_bbox_reg,
            "smooth_l1_beta": box_head.smooth_l1_beta,
            "test_score_thresh": cfg.model.roi_heads.score_thresh_test,
            "test_nms_thresh": cfg.model.roi_heads.nms_thresh_test,
            "test_topk_per_image": cfg.test.detections_per_image,
            "box_reg_loss_type": box_head.bbox_reg_loss_type,
            "loss_weight": {"loss_box_reg": box_head.bbox_reg_loss_weight},
            "use_fed_loss": box_head.use_fed_loss,
            "use_sigmoid_ce": box_head.use_sigmoid_ce,
            "fed_loss_num_classes": box_head.fed_loss_num_classes,
        }
        if box_head.use_fed_loss:
            ret["get_fed_loss_cls_weights"] = functools.partial(
                _fed_loss_cls_weights_from_datasets,
                tuple(cfg.datasets.train),
                float(box_head.fed_loss_freq_weight_power),
            )
        return ret

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (R, ...) per-ROI features -> scores (R, K + 1), proposal deltas (R, K * B) or (R, B)."""
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)

    def losses(
        self, predictions: tuple[torch.Tensor, torch.Tensor], proposals: list[Instances]
    ) -> dict[str, torch.Tensor]:
        """``loss_cls`` and ``loss_box_reg`` (weighted by ``loss_weight``).

        proposals: the sampled proposals the predictions were made for, with ``proposal_boxes``, ``gt_classes``
        and (for images with ground truth) ``gt_boxes``.
        """
        scores, proposal_deltas = predictions
        gt_classes = (
            cat([p.gt_classes for p in proposals], dim=0)
            if len(proposals)
            else torch.empty(0, dtype=torch.long, device=scores.device)
        )
        _log_classification_stats(scores, gt_classes)

        if len(proposals):
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            if proposal_boxes.requires_grad:
                raise ValueError("FastRCNNOutputLayers.losses: proposal boxes must not require gradients")
            # Images without ground truth have no gt_boxes; all their proposals are background, so the proposal
            # boxes only fill the slots and never enter the regression loss.
            gt_boxes = cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals], dim=0
            )
        else:
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=proposal_deltas.device)

        if self.use_sigmoid_ce:
            loss_cls = self.sigmoid_cross_entropy_loss(scores, gt_classes)
        else:
            loss_cls = cross_entropy(scores, gt_classes, reduction="mean")

        losses = {
            "loss_cls": loss_cls,
            "loss_box_reg": self.box_reg_loss(proposal_boxes, gt_boxes, proposal_deltas, gt_classes),
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def get_fed_loss_classes(
        self, gt_classes: torch.Tensor, num_fed_loss_classes: int, num_classes: int, weight: torch.Tensor
    ) -> torch.Tensor:
        """The classes the federated loss covers: the unique ``gt_classes`` plus negatives sampled (without
        replacement, with probabilities ``weight`` (K,)) up to ``num_fed_loss_classes`` in total."""
        present = torch.unique(gt_classes)
        num_negatives = num_fed_loss_classes - len(present)
        if num_negatives <= 0:
            return present
        # draw weights over the K + 1 columns: background and the classes already present are never drawn
        draw_weights = torch.zeros(num_classes + 1, dtype=torch.float32, device=present.device)
        draw_weights[:num_classes] = weight.float()
        draw_weights[present] = 0
        negatives = torch.multinomial(draw_weights, num_negatives, replacement=False)
        return torch.cat([present, negatives])

    def sigmoid_cross_entropy_loss(self, pred_class_logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """Sum over foreground classes of binary cross entropy, averaged over ROIs.

        pred_class_logits: (R, K + 1) (the background logit is not used); gt_classes: (R,) in [0, K].
        """
        if pred_class_logits.numel() == 0:
            return pred_class_logits.new_zeros([1])[0]
        n = pred_class_logits.shape[0]
        k = pred_class_logits.shape[1] - 1
        # one-hot over K + 1 columns, then drop background: a background ROI is negative for every class
        target = pred_class_logits.new_zeros(n, k + 1)
        target[torch.arange(n, device=gt_classes.device), gt_classes] = 1
        target = target[:, :k]
        cls_loss = F.binary_cross_entropy_with_logits(pred_class_logits[:, :-1], target, reduction="none")

        if self.use_fed_loss:
            fed_loss_classes = self.get_fed_loss_classes(
                gt_classes, self.fed_loss_num_classes, k, self.fed_loss_cls_weights
            )
            class_mask = fed_loss_classes.new_zeros(k + 1)
            class_mask[fed_loss_classes] = 1
            weight = class_mask[:k].view(1, k).expand(n, k).float()
            return torch.sum(cls_loss * weight) / n
        return torch.sum(cls_loss) / n

    def box_reg_loss(
        self,
        proposal_boxes: torch.Tensor,
        gt_boxes: torch.Tensor,
        pred_deltas: torch.Tensor,
        gt_classes: torch.Tensor,
    ) -> torch.Tensor:
        """Box regression loss over foreground ROIs, divided by the number of all sampled ROIs R.

        proposal_boxes / gt_boxes: (R, B); pred_deltas: (R, B) or (R, K * B); gt_classes: (R,) long.
        """
        box_dim = proposal_boxes.shape[1]
        fg_rows = nonzero_tuple((gt_classes >= 0) & (gt_classes < self.num_classes))[0]
        if pred_deltas.shape[1] != box_dim:  # class-specific: regress with the deltas of the ground-truth class
            per_class = pred_deltas.view(pred_deltas.shape[0], self.num_classes, box_dim)
            fg_deltas = per_class[fg_rows, gt_classes[fg_rows]]
        else:
            fg_deltas = pred_deltas[fg_rows]
        # one "image" holding every foreground ROI of the batch, all of them foreground (fg_mask=...)
        summed = _dense_box_regression_loss(
            anchors=[proposal_boxes[fg_rows]],
            box2box_transform=self.box2box_transform,
            pred_anchor_deltas=[fg_deltas[None]],
            gt_boxes=[gt_boxes[fg_rows]],
            fg_mask=...,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        # d2-parity: normalise by all sampled ROIs, not the foreground ones, so every foreground ROI weighs the same
        # whatever the foreground count of its batch (and an empty batch gives 0, not NaN).
        return summed / max(gt_classes.numel(), 1.0)

    def inference(
        self, predictions: tuple[torch.Tensor, torch.Tensor], proposals: list[Instances]
    ) -> tuple[list[Instances], list[torch.Tensor]]:
        """Detections per image (see :func:`fast_rcnn_inference`) for proposals with ``proposal_boxes``."""
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        image_shapes = [x.image_size for x in proposals]
        return fast_rcnn_inference(
            boxes, scores, image_shapes, self.test_score_thresh, self.test_nms_thresh, self.test_topk_per_image
        )

    def predict_boxes_for_gt_classes(
        self, predictions: tuple[torch.Tensor, torch.Tensor], proposals: list[Instances]
    ) -> list[torch.Tensor]:
        """Per image (Ri, B): the box predicted for each proposal's ground-truth class (class 0 stands in for
        background/ignored proposals). Needs ``proposal_boxes`` and ``gt_classes``."""
        if not len(proposals):
            return []
        _, proposal_deltas = predictions
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        n, b = proposal_boxes.shape
        predict_boxes = self.box2box_transform.apply_deltas(proposal_deltas, proposal_boxes)  # (R, K * B)
        k = predict_boxes.shape[1] // b
        if k > 1:
            gt_classes = torch.cat([p.gt_classes for p in proposals], dim=0)
            # background (K) and ignored (-1) labels are not valid column indices
            gt_classes = gt_classes.clamp(0, k - 1)
            predict_boxes = predict_boxes.view(n, k, b)[
                torch.arange(n, dtype=torch.long, device=predict_boxes.device), gt_classes
            ]
        return list(predict_boxes.split([len(p) for p in proposals]))

    def predict_boxes(
        self, predictions: tuple[torch.Tensor, torch.Tensor], proposals: list[Instances]
    ) -> list[torch.Tensor]:
        """Per image (Ri, K * B) class-specific or (Ri, B) class-agnostic decoded boxes."""
        if not len(proposals):
            return []
        _, proposal_deltas = predictions
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        predict_boxes = self.box2box_transform.apply_deltas(proposal_deltas, proposal_boxes)
        return list(predict_boxes.split([len(p) for p in proposals]))

    def predict_probs(
        self, predictions: tuple[torch.Tensor, torch.Tensor], proposals: list[Instances]
    ) -> list[torch.Tensor]:
        """Per image (Ri, K + 1) class probabilities (softmax, or sigmoid with ``use_sigmoid_ce``)."""
        scores, _ = predictions
        probs = scores.sigmoid() if self.use_sigmoid_ce else F.softmax(scores, dim=-1)
        return list(probs.split([len(p) for p in proposals], dim=0))
