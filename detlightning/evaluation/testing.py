"""Helpers around evaluation results ``{task: {metric: score}}``: copy-paste printing, verification against
expected values, and flattening to ``{"task/metric": score}`` for loggers."""
from __future__ import annotations

import logging
import pprint
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["flatten_results_dict", "print_csv_format", "verify_results"]

logger = logging.getLogger(__name__)


def print_csv_format(results: Mapping[str, Any]) -> None:
    """Log the main metrics of each task as comma-separated lines (easy to paste into a spreadsheet).

    Per-category metrics (names containing "-", e.g. "AP-person") are left out.
    """
    if not isinstance(results, Mapping):
        raise TypeError(f"print_csv_format expects a mapping {{task: {{metric: score}}}}, got {type(results)}")
    for task, res in results.items():
        if isinstance(res, Mapping):
            important_res = [(k, v) for k, v in res.items() if "-" not in k]
            logger.info("copypaste: Task: %s", task)
            logger.info("copypaste: %s", ",".join(k for k, _ in important_res))
            logger.info("copypaste: %s", ",".join(f"{v:.4f}" for _, v in important_res))
        else:
            logger.info("copypaste: %s=%s", task, res)


def _expected_results(cfg_or_expected: Any) -> Sequence[Sequence[Any]]:
    """The ``[[task, metric, expected, tolerance], ...]`` list of a config (``TEST.EXPECTED_RESULTS`` or
    ``test.expected_results``) or the list itself."""
    if isinstance(cfg_or_expected, (list, tuple)):
        return cfg_or_expected
    for outer, inner in (("TEST", "EXPECTED_RESULTS"), ("test", "expected_results")):
        node = getattr(cfg_or_expected, outer, None)
        if node is not None:
            value = getattr(node, inner, None)
            if value is not None:
                return list(value)
    return []


def verify_results(cfg: Any, results: Mapping[str, Mapping[str, float]]) -> bool:
    """Check ``results`` against the config's expected results ``[[task, metric, expected, tolerance], ...]``
    (``cfg.TEST.EXPECTED_RESULTS`` / ``cfg.test.expected_results``, or the list itself).

    Returns True when every metric is finite and within tolerance (or nothing is expected).
    d2-parity: on failure it logs the expected and actual results and exits the process with status 1.
    """
    expected_results = _expected_results(cfg)
    if not len(expected_results):
        return True

    ok = True
    for entry in expected_results:
        if len(entry) != 4:
            raise ValueError(f"expected results entries are [task, metric, expected, tolerance], got {entry!r}")
        task, metric, expected, tolerance = entry
        actual = results.get(task, {}).get(metric, None)
        if actual is None or not np.isfinite(actual) or abs(actual - expected) > tolerance:
            ok = False

    if not ok:
        logger.error("Result verification failed!")
        logger.error("Expected Results: %s", expected_results)
        logger.error("Actual Results: %s", pprint.pformat(results))
        sys.exit(1)
    logger.info("Results verification passed.")
    return ok


def flatten_results_dict(results: Mapping[str, Any]) -> dict[str, Any]:
    """``{"k1": {"k2": {"k3": v}}}`` -> ``{"k1/k2/k3": v}`` (e.g. ``{"bbox/AP": 40.1}``) for metric loggers."""
    r: dict[str, Any] = {}
    for k, v in results.items():
        if isinstance(v, Mapping):
            for kk, vv in flatten_results_dict(v).items():
                r[f"{k}/{kk}"] = vv
        else:
            r[k] = v
    return r
