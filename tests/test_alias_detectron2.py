"""The opt-in detectron2 alias, each case in a fresh interpreter so the import system starts clean."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _python(code: str, *args: str, cwd: Path | None = None, extra_path: Path | None = None,
            module: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, *args] if module else [sys.executable, "-c", textwrap.dedent(code)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_alias_binds_detectron2_names_to_detlightning_modules():
    proc = _python("""
        import pickle, sys
        import detlightning.alias_detectron2
        import detectron2.modeling
        from detectron2.config import get_cfg
        from detectron2.structures import Boxes, BoxMode
        import detectron2.modeling.backbone.fpn as d2_fpn
        import detlightning, detlightning.config, detlightning.modeling, detlightning.structures
        import detlightning.modeling.backbone.fpn

        assert sys.modules["detectron2"] is detlightning
        assert sys.modules["detectron2.modeling"] is detlightning.modeling
        assert detectron2.modeling.build_model is detlightning.modeling.build_model
        assert get_cfg is detlightning.config.get_cfg
        assert Boxes is detlightning.structures.Boxes
        assert d2_fpn is detlightning.modeling.backbone.fpn
        assert detectron2.modeling.META_ARCH_REGISTRY is detlightning.modeling.META_ARCH_REGISTRY
        # a pickle written by detectron2 names detectron2.*: it loads as detlightning's object
        d2_pickle = pickle.dumps(BoxMode.XYWH_ABS, protocol=0).replace(b"detlightning", b"detectron2")
        assert b"detectron2.structures" in d2_pickle
        assert pickle.loads(d2_pickle) is detlightning.structures.BoxMode.XYWH_ABS

        try:
            import detectron2._C
        except ModuleNotFoundError as e:
            assert "detlightning._C" in str(e), e
        else:
            raise AssertionError("detectron2._C imported")
        try:
            from detectron2.config import NoSuchName
        except ImportError as e:
            assert "detlightning.config" in str(e), e
        else:
            raise AssertionError("NoSuchName imported")
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


def test_without_the_alias_detectron2_is_not_importable():
    proc = _python("""
        import sys
        import detlightning, detlightning.modeling, detlightning.config
        assert not any(getattr(f, "is_detlightning_alias", False) for f in sys.meta_path)
        try:
            import detectron2
        except ModuleNotFoundError:
            print("refused")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "refused"


def test_a_real_detectron2_on_the_path_makes_the_alias_refuse(tmp_path: Path):
    (tmp_path / "detectron2").mkdir()
    (tmp_path / "detectron2" / "__init__.py").write_text("REAL = True\n")
    proc = _python("import detlightning.alias_detectron2", extra_path=tmp_path)
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "a real detectron2 is importable" in proc.stderr
    assert str(tmp_path / "detectron2") in proc.stderr

    run = _python("", "-m", "detlightning.alias_detectron2", "any_script.py", extra_path=tmp_path, module=True)
    assert run.returncode == 1 and "a real detectron2 is importable" in run.stderr


def test_a_namespace_folder_named_detectron2_does_not_block_the_alias(tmp_path: Path):
    (tmp_path / "detectron2").mkdir()  # e.g. an output folder: no __init__.py
    proc = _python("import detlightning.alias_detectron2, detectron2, detlightning; assert detectron2 is detlightning",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


SCRIPT = """
import sys
from detectron2.modeling import build_model
import detlightning.modeling
assert build_model is detlightning.modeling.build_model
print("argv", sys.argv, "path0", sys.path[0], "name", __name__)
"""


def test_run_a_script_with_the_alias(tmp_path: Path):
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    proc = _python("", "-m", "detlightning.alias_detectron2", str(script), "--flag", "x", module=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"argv {[str(script), '--flag', 'x']} path0 {tmp_path} name __main__" in proc.stdout


def test_run_a_module_with_the_alias(tmp_path: Path):
    (tmp_path / "user_module.py").write_text(SCRIPT)
    proc = _python("", "-m", "detlightning.alias_detectron2", "-m", "user_module", "a", module=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"argv {[str(tmp_path / 'user_module.py'), 'a']} path0 {tmp_path} name __main__" in proc.stdout


def test_run_usage_errors(tmp_path: Path):
    no_args = _python("", "-m", "detlightning.alias_detectron2", module=True)
    assert no_args.returncode == 2 and "usage: detlightning-run" in no_args.stderr
    missing = _python("", "-m", "detlightning.alias_detectron2", str(tmp_path / "nope.py"), module=True)
    assert missing.returncode == 2 and "nope.py" in missing.stderr


@pytest.mark.parametrize("exit_code", [0, 3])
def test_run_propagates_the_scripts_exit_status(tmp_path: Path, exit_code: int):
    script = tmp_path / "exits.py"
    script.write_text(f"import sys, detectron2\nsys.exit({exit_code})\n")
    proc = _python("", "-m", "detlightning.alias_detectron2", str(script), module=True)
    assert proc.returncode == exit_code, proc.stderr[-3000:]
