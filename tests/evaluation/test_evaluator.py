"""DatasetEvaluator(s) and inference_on_dataset: the documented Counter example, eval mode / no_grad handling,
warm-up-free timing and result merging."""
from __future__ import annotations

import logging
import re
import time

import pytest
import torch
from torch import nn

from detlightning.evaluation import DatasetEvaluator, DatasetEvaluators, inference_context, inference_on_dataset
from detlightning.structures import Boxes, Instances


class Counter(DatasetEvaluator):
    """The example of detectron2's docs (tutorials/evaluation.md), verbatim in behaviour."""

    def reset(self):
        self.count = 0

    def process(self, inputs, outputs):
        for output in outputs:
            self.count += len(output["instances"])

    def evaluate(self):
        # save self.count somewhere, or print it, or return it.
        return {"count": self.count}


class ToyDetector(nn.Module):
    """Returns, for each input dict, ``n`` boxes where ``n = input["n"]``; records its mode and grad state."""

    def __init__(self, delays: list[float] | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.seen_training: list[bool] = []
        self.seen_grad: list[bool] = []
        self.delays = list(delays or [])

    def forward(self, inputs):
        self.seen_training.append(self.training)
        self.seen_grad.append(torch.is_grad_enabled())
        if self.delays:
            time.sleep(self.delays.pop(0))
        outputs = []
        for x in inputs:
            n = x["n"]
            boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]]).repeat(n, 1)
            outputs.append({"instances": Instances((8, 8), pred_boxes=Boxes(boxes), scores=torch.ones(n))})
        return outputs


# 3 batches of 2 images with 1+2, 0+4, 3+1 instances
LOADER = [[{"n": 1}, {"n": 2}], [{"n": 0}, {"n": 4}], [{"n": 3}, {"n": 1}]]


class Echo(DatasetEvaluator):
    def __init__(self, key: str) -> None:
        self.key = key
        self.calls: list[str] = []

    def reset(self):
        self.calls.append("reset")
        self.batches = 0

    def process(self, inputs, outputs):
        self.calls.append("process")
        self.batches += 1

    def evaluate(self):
        self.calls.append("evaluate")
        return {self.key: {"batches": self.batches}}


@pytest.mark.parametrize("initially_training", [True, False])
def test_counter_example_and_mode_restored(initially_training):
    model = ToyDetector()
    model.train(initially_training)
    echo = Echo("echo")
    results = inference_on_dataset(model, LOADER, DatasetEvaluators([Counter(), echo]))
    assert results == {"count": 11, "echo": {"batches": 3}}
    assert list(results) == ["count", "echo"]  # in the evaluators' order
    assert echo.calls == ["reset", "process", "process", "process", "evaluate"]
    assert model.seen_training == [False, False, False]  # eval mode inside
    assert model.seen_grad == [False, False, False]  # under no_grad
    assert model.training is initially_training
    assert all(m.training is initially_training for m in model.modules())
    assert torch.is_grad_enabled()


def test_single_evaluator_and_list_and_none():
    model = ToyDetector()
    assert inference_on_dataset(model, LOADER, Counter()) == {"count": 11}
    assert inference_on_dataset(model, LOADER, [Counter(), Echo("e")]) == {"count": 11, "e": {"batches": 3}}
    assert inference_on_dataset(model, LOADER, None) == {}
    assert len(model.seen_training) == 9  # the model ran over every batch each time


def test_plain_callable_model():
    calls = []

    def model(inputs):
        calls.append(torch.is_grad_enabled())
        return [{"instances": Instances((8, 8), pred_boxes=Boxes(torch.zeros(x["n"], 4)))} for x in inputs]

    assert inference_on_dataset(model, LOADER, Counter()) == {"count": 11}
    assert calls == [False, False, False]


def test_mode_restored_when_model_raises():
    class Broken(nn.Module):
        def forward(self, inputs):
            raise RuntimeError("boom")

    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        inference_on_dataset(model, LOADER, Counter())
    assert model.training
    assert torch.is_grad_enabled()

    model.eval()
    with inference_context(model):
        assert not model.training
    assert not model.training


def test_duplicate_keys_rejected():
    with pytest.raises(ValueError, match="same key 'count'"):
        inference_on_dataset(ToyDetector(), LOADER, DatasetEvaluators([Counter(), Counter()]))


def test_none_results_become_empty_dict():
    class NoneEval(DatasetEvaluator):
        pass

    assert inference_on_dataset(ToyDetector(), LOADER, NoneEval()) == {}
    both = DatasetEvaluators([NoneEval(), Counter()])
    both.reset()
    assert both.evaluate() == {"count": 0}  # a None result is skipped when merging


def test_not_an_evaluator():
    with pytest.raises(TypeError, match="not an evaluator"):
        DatasetEvaluators([Counter(), object()])


def test_loader_without_len():
    with pytest.raises(TypeError, match="fixed length"):
        inference_on_dataset(ToyDetector(), iter(LOADER), Counter())


def test_callbacks_order():
    events = []
    cbs = {k: (lambda k=k: events.append(k)) for k in ("on_start", "before_inference", "after_inference", "on_end")}
    inference_on_dataset(ToyDetector(), LOADER[:2], Counter(), callbacks=cbs)
    assert events == ["on_start", "before_inference", "after_inference", "before_inference", "after_inference",
                      "on_end"]
    with pytest.raises(KeyError, match="unknown"):
        inference_on_dataset(ToyDetector(), LOADER, Counter(), callbacks={"after": lambda: None})


def test_timing_excludes_warmup(caplog):
    # 7 iterations: the first 5 are warm-up (slow here), the last 2 are fast and the only ones timed
    loader = [[{"n": 1}]] * 7
    model = ToyDetector(delays=[0.2] * 5 + [0.0, 0.0])
    with caplog.at_level(logging.INFO, logger="detlightning.evaluation.evaluator"):
        assert inference_on_dataset(model, loader, Counter()) == {"count": 7}
    text = caplog.text
    assert "Start inference on 7 batches" in text
    total = re.search(r"Total inference time: \S+ \(([\d.]+) s / iter per device, on 1 devices\)", text)
    compute = re.search(r"Total inference pure compute time: \S+ \(([\d.]+) s / iter per device, on 1 devices\)",
                        text)
    assert total and compute, text
    # with the warm-up included, both would be >= 5 * 0.2 / 7 = 0.14 s / iter
    assert float(compute.group(1)) < 0.1
    assert float(total.group(1)) < 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model():
    class CudaDetector(ToyDetector):
        def forward(self, inputs):
            return [{"instances": o["instances"].to("cuda")} for o in super().forward(inputs)]

    model = CudaDetector().cuda().train()
    assert inference_on_dataset(model, LOADER, Counter()) == {"count": 11}
    assert model.training and model.seen_training == [False] * 3
