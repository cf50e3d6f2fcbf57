"""detectron2's ``detectron2.solver`` names (``from detectron2.solver import build_lr_scheduler`` ports by renaming
the package). The implementation lives in :mod:`detlightning.engine.solver` (plain torch, no Lightning)."""
from ..engine.solver import *  # noqa: F401,F403
from ..engine.solver import __all__  # noqa: F401
