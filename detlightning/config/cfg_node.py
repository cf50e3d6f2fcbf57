"""``CfgNode``: detectron2's yacs-style config object (upper-case keys, attribute access), for reading detectron2 yaml.

Built on the ``yacs`` package (which detectron2's own ``CfgNode`` extends), so merging, value parsing
(``ast.literal_eval`` of strings), type checking, ``clone``/``freeze``/``dump`` behave as they do in detectron2.
Added here, as in detectron2:

* ``merge_from_file`` follows ``_BASE_`` chains (a relative base path is resolved against the including file);
* detectron2's model-zoo idiom ``!!python/object/apply:eval ["[[x, x * 2**(1.0/3)] for x in [32, 64]]"]`` is read
  by a small arithmetic evaluator (literals, + - * / // % **, list/tuple comprehensions, ``range``), never by
  Python's ``eval``; anything outside that subset is an error unless ``allow_unsafe=True`` is passed explicitly.

Errors name the file and the key: an unknown key raises ``KeyError``, a value of the wrong type ``ValueError``.
"""
from __future__ import annotations

import ast
import copy
import logging
import operator
import os
from collections.abc import Callable, Sequence
from typing import Any

import yaml
from yacs.config import CfgNode as _YacsCfgNode
from yacs.config import _check_and_coerce_cfg_value_type, _merge_a_into_b

__all__ = ["BASE_KEY", "CfgNode", "safe_eval"]

logger = logging.getLogger(__name__)

BASE_KEY = "_BASE_"
_EVAL_TAG = "tag:yaml.org,2002:python/object/apply:eval"
_CURRENT_VERSION = 2


# ------------------------------------------------------------------------------------- restricted expressions
_BIN_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPS: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_MAX_ITEMS = 100_000  # bound on range()/comprehension sizes: a config value, not a computation


def safe_eval(expression: str) -> Any:
    """Evaluate the arithmetic subset of Python that detectron2 configs put behind ``!!python/object/apply:eval``.

    Allowed: int/float/str/bool/None literals, lists and tuples, unary ``+``/``-``, binary ``+ - * / // % **``,
    list comprehensions and generator expressions (with ``if`` filters) and ``range(...)``. Anything else (names
    other than comprehension variables, attribute access, other calls) raises ``ValueError``.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"cannot parse config expression {expression!r}: {e.msg}") from e
    return _eval_node(tree.body, {}, expression)


def _eval_node(node: ast.AST, env: dict[str, Any], source: str) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, ast.List):
        return [_eval_node(e, env, source) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_eval_node(e, env, source) for e in node.elts)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        return _UNARY_OPS[type(node.op)](_eval_node(node.operand, env, source))
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
        left, right = _eval_node(node.left, env, source), _eval_node(node.right, env, source)
        if isinstance(node.op, ast.Pow) and isinstance(right, (int, float)) and abs(right) > 64:
            raise ValueError(f"exponent {right} too large in config expression {source!r}")
        seq = (str, list, tuple)
        if isinstance(node.op, ast.Mult) and (isinstance(left, seq) or isinstance(right, seq)):
            n = right if isinstance(left, seq) else left
            if isinstance(n, int) and n > _MAX_ITEMS:
                raise ValueError(f"sequence repetition too large in config expression {source!r}")
        return _BIN_OPS[type(node.op)](left, right)
    if isinstance(node, ast.Name) and node.id in env:
        return env[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" and not node.keywords:
        args = [_eval_node(a, env, source) for a in node.args]
        if not all(isinstance(a, int) for a in args):
            raise ValueError(f"range() takes integers in config expression {source!r}")
        r = range(*args)
        if len(r) > _MAX_ITEMS:
            raise ValueError(f"range too long in config expression {source!r}")
        return list(r)
    if isinstance(node, (ast.ListComp, ast.GeneratorExp)):
        out = _eval_comprehension(node.elt, node.generators, env, source)
        return out if isinstance(node, ast.ListComp) else tuple(out)
    raise ValueError(
        f"config expression {source!r} uses {type(node).__name__} ({ast.unparse(node)!r}), which the safe "
        f"evaluator does not allow (literals, arithmetic, comprehensions and range() only)"
    )


def _eval_comprehension(elt: ast.AST, generators: list[ast.comprehension], env: dict[str, Any], source: str) -> list:
    if not generators:
        return [_eval_node(elt, env, source)]
    gen, rest = generators[0], generators[1:]
    if not isinstance(gen.target, ast.Name) or gen.is_async:
        raise ValueError(f"config expression {source!r}: only 'for <name> in ...' comprehensions are allowed")
    iterable = _eval_node(gen.iter, env, source)
    if not isinstance(iterable, (list, tuple, str)):
        raise ValueError(f"config expression {source!r}: a comprehension must iterate over a list, tuple or range")
    out: list = []
    for item in iterable:
        inner = {**env, gen.target.id: item}
        if all(_eval_node(cond, inner, source) for cond in gen.ifs):
            out.extend(_eval_comprehension(elt, rest, inner, source))
            if len(out) > _MAX_ITEMS:
                raise ValueError(f"comprehension too long in config expression {source!r}")
    return out


class _SafeLoaderWithEval(yaml.SafeLoader):
    """yaml.SafeLoader plus detectron2's ``!!python/object/apply:eval [expr]`` through :func:`safe_eval`."""


def _construct_eval(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if not isinstance(node, yaml.SequenceNode):
        raise yaml.constructor.ConstructorError(
            None, None, "!!python/object/apply:eval expects a one-element list [expression]", node.start_mark
        )
    args = loader.construct_sequence(node, deep=True)
    if len(args) != 1 or not isinstance(args[0], str):
        raise yaml.constructor.ConstructorError(
            None, None, f"!!python/object/apply:eval expects one expression string, got {args!r}", node.start_mark
        )
    try:
        return safe_eval(args[0])
    except ValueError as e:
        raise yaml.constructor.ConstructorError(None, None, str(e), node.start_mark) from e


_SafeLoaderWithEval.add_constructor(_EVAL_TAG, _construct_eval)


def _merge_dicts(base: dict, override: dict) -> dict:
    """``override`` merged into a copy of ``base``; nested dicts merge, other values replace."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge_dicts(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ---------------------------------------------------------------------------------------------------- CfgNode
class CfgNode(_YacsCfgNode):
    """detectron2's ``CfgNode``: a dict with attribute access and upper-case keys.

    ``get_d2_cfg()`` returns one holding all of detectron2's defaults; ``merge_from_file(path)`` (with
    ``_BASE_``), ``merge_from_list(["MODEL.WEIGHTS", "x.pth"])``, ``clone()``, ``freeze()``/``defrost()``,
    ``dump()`` work as in detectron2. Pass it to ``build_model`` & co., or convert it with
    :func:`detlightning.config.to_detlightning_cfg`.
    """

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> dict[str, Any]:
        """The yaml file as a dict, with its ``_BASE_`` file(s) merged underneath, recursively.

        Raises:
            FileNotFoundError: the file or one of its bases does not exist (the message names the including file).
            ValueError: the yaml is not a mapping, or holds a Python tag outside the safe subset.
        """
        return cls._load_with_base(os.fspath(filename), allow_unsafe, ())

    @classmethod
    def _load_with_base(cls, filename: str, allow_unsafe: bool, chain: tuple[str, ...]) -> dict[str, Any]:
        path = os.path.abspath(os.path.expanduser(filename))
        if path in chain:
            raise ValueError(f"_BASE_ cycle in detectron2 configs: {' -> '.join(chain + (path,))}")
        if not os.path.isfile(path):
            where = f" (the _BASE_ of {chain[-1]})" if chain else ""
            raise FileNotFoundError(f"detectron2 config file {filename!r} not found{where}")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            cfg = yaml.load(text, Loader=_SafeLoaderWithEval)  # noqa: S506  (SafeLoader subclass)
        except yaml.constructor.ConstructorError as e:
            if not allow_unsafe:
                raise ValueError(
                    f"{path}: {e}. Only plain yaml and the arithmetic '!!python/object/apply:eval' are read; pass "
                    f"allow_unsafe=True to merge_from_file to let PyYAML construct arbitrary Python objects "
                    f"(executes code from the file)."
                ) from e
            logger.warning("Loading %s with yaml.unsafe_load (allow_unsafe=True): it may run code", path)
            cfg = yaml.unsafe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid yaml: {e}") from e
        if cfg is None:
            cfg = {}
        if not isinstance(cfg, dict):
            raise ValueError(f"{path}: a detectron2 config must be a yaml mapping, got {type(cfg).__name__}")
        base = cfg.pop(BASE_KEY, None)
        if base is None:
            return cfg
        if not isinstance(base, str):
            raise ValueError(f"{path}: {BASE_KEY} must be a file path string, got {base!r}")
        base = os.path.expanduser(base)
        if not os.path.isabs(base) and "://" not in base:
            base = os.path.join(os.path.dirname(path), base)  # relative to the including file, as detectron2
        base_cfg = cls._load_with_base(base, allow_unsafe, chain + (path,))
        return _merge_dicts(base_cfg, cfg)

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        """Merge a detectron2 yaml file (and its ``_BASE_`` chain) into this config.

        Raises:
            KeyError: the file sets a key this config does not have (message names the key and the file).
            ValueError: a value has the wrong type for its key, or the file is a VERSION 1 config.
        """
        self._check_mutable()
        loaded = self.load_yaml_with_base(cfg_filename, allow_unsafe=allow_unsafe)
        version = loaded.get("VERSION", _CURRENT_VERSION)
        if version != _CURRENT_VERSION:
            raise ValueError(
                f"{cfg_filename}: VERSION {version!r} configs are not supported (expected {_CURRENT_VERSION}); "
                f"upgrade the file with detectron2 first (detectron2.config.upgrade_config)"
            )
        try:
            self.merge_from_other_cfg(type(self)(loaded))
        except (KeyError, ValueError) as e:
            msg = e.args[0] if e.args else str(e)
            raise type(e)(f"{cfg_filename}: {msg}") from e
        except AssertionError as e:  # yacs rejects value types it cannot hold (e.g. a yaml date)
            raise ValueError(f"{cfg_filename}: {e}") from e

    def merge_from_other_cfg(self, cfg_other: _YacsCfgNode) -> None:
        """Merge another CfgNode (keys must exist here; values are type-checked)."""
        self._check_mutable()
        if BASE_KEY in cfg_other:
            raise ValueError(f"{BASE_KEY} can only be used in a file (merge_from_file)")
        staged = self.clone()  # all or nothing: a bad key or value leaves this config unchanged
        _merge_a_into_b(cfg_other, staged, staged, [])
        self._assign_from(staged)

    def merge_from_list(self, cfg_list: Sequence[Any]) -> None:
        """Merge ``[key1, value1, key2, value2, ...]``; string values are parsed like Python literals
        (``"(800,)"`` becomes a tuple, ``"0.02"`` a float; an unparsable string stays a string).

        Raises:
            ValueError: odd-length list, or a value whose type does not match the key's (names the key).
            KeyError: an unknown key (names it).
        """
        self._check_mutable()
        cfg_list = list(cfg_list)
        staged = self.clone()  # all or nothing
        if len(cfg_list) % 2:
            raise ValueError(f"merge_from_list needs [key, value, key, value, ...] pairs; got odd length {cfg_list}")
        for full_key, raw in zip(cfg_list[0::2], cfg_list[1::2]):
            if not isinstance(full_key, str):
                raise TypeError(f"merge_from_list: keys must be strings, got {full_key!r}")
            if full_key == BASE_KEY:
                raise ValueError(f"{BASE_KEY} can only be used in a file (merge_from_file)")
            if self.key_is_deprecated(full_key):
                continue
            if self.key_is_renamed(full_key):
                self.raise_key_rename_error(full_key)
            node: _YacsCfgNode = staged
            parts = full_key.split(".")
            for i, part in enumerate(parts):
                if not isinstance(node, _YacsCfgNode) or part not in node:
                    parent = ".".join(parts[:i]) or "<root>"
                    choices = sorted(node) if isinstance(node, dict) else []
                    raise KeyError(f"Non-existent config key: {full_key} ({parent} has keys {choices})")
                if i < len(parts) - 1:
                    node = node[part]
            value = self._decode_cfg_value(raw)
            value = _check_and_coerce_cfg_value_type(value, node[parts[-1]], parts[-1], full_key)
            dict.__setitem__(node, parts[-1], value)
        self._assign_from(staged)

    def _assign_from(self, other: dict) -> None:
        """Make this node equal to ``other`` in place (nested nodes keep their identity where both have one)."""
        for key in [k for k in self if k not in other]:
            dict.__delitem__(self, key)
        for key, value in other.items():
            mine = self.get(key)
            if isinstance(mine, CfgNode) and isinstance(value, CfgNode):
                mine._assign_from(value)
            else:
                dict.__setitem__(self, key, value)

    def _check_mutable(self) -> None:
        if self.is_frozen():
            raise AttributeError("This CfgNode is frozen (immutable); call cfg.defrost() before merging into it")

    def __setattr__(self, name: str, value: Any) -> None:
        # d2-parity: detectron2 lets a derived value be set once under a COMPUTED_ name, never overwritten
        if name.startswith("COMPUTED_") and name in self and self[name] != value:
            raise KeyError(f"Computed attribute {name!r} already exists with a different value {self[name]!r}")
        super().__setattr__(name, value)

    def flatten(self) -> dict[str, Any]:
        """``{"MODEL.RPN.NMS_THRESH": 0.7, ...}``: every leaf value under its dotted key."""
        out: dict[str, Any] = {}

        def walk(node: dict, prefix: str) -> None:
            for k, v in node.items():
                key = f"{prefix}{k}"
                if isinstance(v, dict):
                    walk(v, key + ".")
                else:
                    out[key] = v

        walk(self, "")
        return out
