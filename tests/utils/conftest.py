"""Fixtures shared by the writer tests."""
from __future__ import annotations

import logging

import pytest

from detlightning.utils import events


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def list_handler() -> _ListHandler:
    """A logging handler that keeps every message (``.messages``), at any level."""
    return _ListHandler()


@pytest.fixture
def printer_messages(list_handler):
    """Messages logged by ``detlightning.utils.events`` (CommonMetricPrinter) during the test; a handler on the
    printer's own logger, independent of propagation settings made by setup_logger elsewhere."""
    handler = list_handler
    log = logging.getLogger(events.__name__)
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    yield handler.messages
    log.removeHandler(handler)
    log.setLevel(old_level)
