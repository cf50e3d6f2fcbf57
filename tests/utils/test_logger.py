from __future__ import annotations

import logging
import uuid

import pytest

from detlightning.utils import logger as logger_mod
from detlightning.utils.logger import (
    create_small_table,
    log_every_n,
    log_every_n_seconds,
    log_first_n,
    setup_logger,
)


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cleanup_loggers():
    names: list[str] = []
    yield names
    for n in names:
        log = logging.getLogger(n)
        for h in list(log.handlers):
            log.removeHandler(h)


def test_setup_logger_writes_file_in_output_dir(tmp_path, capsys, cleanup_loggers):
    name = _unique("dltest")
    cleanup_loggers.append(name)
    log = setup_logger(str(tmp_path / "out"), name=name, color=False)
    assert log is logging.getLogger(name) and not log.propagate
    logging.getLogger(f"{name}.child").info("hello file")
    log.warning("second line")
    text = (tmp_path / "out" / "log.txt").read_text()
    lines = text.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(f"{name}.child INFO: hello file")
    assert lines[1].endswith(f"{name} WARNING: second line")
    assert "hello file" in capsys.readouterr().out  # rank 0 also logs to stdout


def test_setup_logger_rank_file_and_no_stdout(tmp_path, capsys, cleanup_loggers):
    name = _unique("dltest")
    cleanup_loggers.append(name)
    log = setup_logger(str(tmp_path), distributed_rank=2, name=name)
    log.info("from rank two")
    assert not (tmp_path / "log.txt").exists()
    assert "from rank two" in (tmp_path / "log.txt.rank2").read_text()
    assert "from rank two" not in capsys.readouterr().out


def test_setup_logger_explicit_file_and_idempotent(tmp_path, cleanup_loggers):
    name = _unique("dltest")
    cleanup_loggers.append(name)
    target = tmp_path / "sub" / "train.log"
    log = setup_logger(str(target), name=name, configure_stdout=False)
    setup_logger(str(target), name=name, configure_stdout=False)  # same arguments: no second handler
    assert len(log.handlers) == 1
    log.info("once")
    assert target.read_text().count("once") == 1


def test_color_formatter_abbreviates_root_name():
    fmt = logger_mod._ColorfulFormatter("%(name)s|%(message)s", root_name="detlightning", abbrev_name="dl")
    rec = logging.LogRecord("detlightning.modeling.rpn", logging.WARNING, __file__, 1, "careful", None, None)
    out = fmt.format(rec)
    assert "dl.modeling.rpn|careful" in out and "WARNING" in out and "\x1b[" in out


@pytest.fixture
def captured(list_handler):
    name = _unique("dlrate")
    log = logging.getLogger(name)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    h = list_handler
    log.addHandler(h)
    yield name, h.messages
    log.removeHandler(h)


def test_log_first_n_by_caller_and_by_message(captured):
    name, msgs = captured
    for i in range(5):
        log_first_n(logging.INFO, f"msg {i}", n=2, name=name)
    assert msgs == ["msg 0", "msg 1"]
    msgs.clear()
    for i in range(4):
        log_first_n(logging.INFO, f"m{i % 2}", n=1, name=name, key="message")
    assert msgs == ["m0", "m1"]
    with pytest.raises(ValueError, match="key"):
        log_first_n(logging.INFO, "x", name=name, key="bogus")


def test_log_every_n(captured):
    name, msgs = captured
    for i in range(7):
        log_every_n(logging.INFO, f"it {i}", n=3, name=name)
    assert msgs == ["it 0", "it 3", "it 6"]


def test_log_every_n_seconds(captured, monkeypatch):
    name, msgs = captured
    clock = iter([0.0, 0.5, 1.2, 1.5, 2.3])
    monkeypatch.setattr(logger_mod, "_clock", lambda: next(clock))
    for i in range(5):
        log_every_n_seconds(logging.INFO, f"t{i}", n=1, name=name)
    assert msgs == ["t0", "t2", "t4"]  # at 0.0, 1.2 (>= 1 s later), 2.3 (>= 1 s after 1.2)


def test_log_first_n_defaults_to_callers_module_logger(list_handler):
    log = logging.getLogger(__name__)
    h = list_handler
    log.addHandler(h)
    old = log.level
    log.setLevel(logging.DEBUG)
    try:
        log_first_n(logging.INFO, "from the test module")
    finally:
        log.removeHandler(h)
        log.setLevel(old)
    assert h.messages == ["from the test module"]


def test_create_small_table():
    table = create_small_table({"AP": 40.12345, "AP50": 60.0, "name": "x"})
    lines = table.splitlines()
    assert len(lines) == 3
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    values = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header == ["AP", "AP50", "name"]
    assert values == ["40.123", "60.000", "x"]
    assert set(lines[1]) <= set("|:-")
