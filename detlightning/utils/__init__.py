"""Foundation utilities shared by every other subpackage (no detlightning imports beyond ``utils``).

Submodules mirror detectron2's ``detectron2.utils``: ``registry``, ``events``, ``comm``, ``logger``, ``env``,
``file_io``. Import from the submodule (``from detlightning.utils.events import EventStorage``), as in detectron2.
"""
