"""Loading pickled PyTorch model files (mace ``.model`` files, ltau's own MACE files) without
letting them run code.

A mace ``.model`` file is a pickled module. It is loaded through torch's ``weights_only``
unpickler with an allowlist: the classes of ``mace.modules``, ``e3nn`` and ``torch.nn``, and a
few named activation functions. Any other global the file names (``os.system``,
``builtins.eval``, a class of another package) is refused before anything is unpickled, and no
module outside the allowlisted packages is imported to look it up.

One more callable is needed: e3nn's compiled pieces are ``torch.fx`` graph modules, which
pickle their generated Python source and rebuild themselves by executing it
(``torch.fx.graph_module.reduce_graph_module``). ltau puts a checked version in its place: the
source must be one straight-line ``forward`` of tensor operations (see
:func:`check_fx_source`), and its import lines must be those torch.fx writes, or the file is
refused.

Files that cannot be loaded this way need an explicit opt-in (``trusted=True``, the CLI's
``--trust-model``), which the error names. :func:`archive_kind` tells the PyTorch archive
formats apart by their entries, without loading anything.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ltau.exceptions import LTAUFileError

logger = logging.getLogger(__name__)

TRUST_HINT = (
    "load it only if you trust where it came from, with trusted=True (CLI: --trust-model), "
    "which lets the file run code"
)
ALLOWED_CLASS_PACKAGES = (
    "mace.modules.",
    "e3nn.o3.",
    "e3nn.nn.",
    "e3nn.math.",
    "torch.nn.modules.",
    "torch.nn.parameter.",
)
"""Packages whose classes a model file may name (modules, irreps, parameters)."""
ALLOWED_FUNCTIONS = {
    f"torch.nn.functional.{name}"
    for name in ("silu", "relu", "gelu", "tanh", "sigmoid", "softplus", "elu", "leaky_relu")
} | {"torch.tanh", "torch.sigmoid", "torch.abs", "torch.nn.functional.normalize"}
"""Functions (activations) a model file may name."""
ALLOWED_EXACT = {"torch.fx._symbolic_trace.Tracer"}
"""Single classes outside the packages above that torch.fx graph modules name."""
_FX_REBUILD = "torch.fx.graph_module.reduce_graph_module"
_FX_IMPORT_LINE = re.compile(
    r"(NoneType = type\(None\)"
    r"|from (math|torch) import (inf|nan|device)"
    r"|import torch"
    r"|import torch\.fx\._pytree as fx_pytree"
    r"|import torch\.utils\._pytree as pytree)"
)
_FX_GLOBALS = {"torch", "fx_pytree", "pytree", "inf", "nan", "device", "NoneType", "getattr"}
_FX_NODES = (
    ast.Module,
    ast.FunctionDef,
    ast.arguments,
    ast.arg,
    ast.Assign,
    ast.Return,
    ast.Expr,
    ast.Name,
    ast.Load,
    ast.Store,
    ast.Constant,
    ast.Attribute,
    ast.Call,
    ast.keyword,
    ast.Tuple,
    ast.List,
    ast.Dict,
    ast.Subscript,
    ast.Slice,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
    ast.Starred,
    ast.operator,
    ast.unaryop,
    ast.cmpop,
)
_DENIED_TORCH_OPS = {"from_file", "load", "save"}


def is_torch_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zip archive as ``torch.save`` and TorchScript write them."""
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def archive_kind(path: Path) -> str:
    """``"torch-save"``, ``"torchscript"``, ``"nequip-torchscript"``, ``"torch-package"`` or
    ``"aotinductor"``, from the archive's entries."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise LTAUFileError(f"{path} is not a model file (not a PyTorch archive): {exc}") from exc
    if any("/data/aotinductor/" in name for name in names):
        return "aotinductor"
    if any("/code/" in name for name in names) and any(n.endswith("constants.pkl") for n in names):
        if any(name.endswith("/extra/num_types") for name in names):
            return "nequip-torchscript"
        return "torchscript"
    if any(name.endswith("/data.pkl") for name in names):
        return "torch-save"
    if any(name.endswith(".data/version") for name in names):
        return "torch-package"
    raise LTAUFileError(f"{path} is a zip archive but not a PyTorch model")


def load_pickled_model(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", trusted: bool = False
) -> Any:
    """Unpickle a torch-saved file (e.g. a mace ``.model``), allowing only the globals a
    mace/e3nn/torch model is made of, unless ``trusted``; tensors are mapped to ``device``."""
    path = Path(path)
    if not path.is_file():
        raise LTAUFileError(f"{path} does not exist")
    if not is_torch_archive(path):
        raise LTAUFileError(f"{path} is not a readable model file (not a torch.save archive)")
    if trusted:
        logger.warning("loading %s as trusted: it may run code", path)
        return _load(path, device, weights_only=False)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as exc:
        raise LTAUFileError(f"{path} is not a readable PyTorch model file: {exc}") from exc
    allowed = [_allowed_global(name, path) for name in names]
    with torch.serialization.safe_globals(allowed):
        return _load(path, device, weights_only=True)


def _load(path: Path, device: str | torch.device, *, weights_only: bool) -> Any:
    try:
        return torch.load(path, map_location=device, weights_only=weights_only)
    except LTAUFileError:
        raise
    except Exception as exc:
        raise LTAUFileError(f"{path} could not be loaded as a model: {exc}") from exc


def _allowed_global(name: str, path: Path) -> Any:
    """The object (or ``(object, name)`` pair) that torch may use for ``name``."""
    if name == _FX_REBUILD:
        return (checked_reduce_graph_module, _FX_REBUILD)
    module_name, _, attribute = name.rpartition(".")
    as_class = name in ALLOWED_EXACT or name.startswith(ALLOWED_CLASS_PACKAGES)
    if not (as_class or name in ALLOWED_FUNCTIONS) or attribute.startswith("__"):
        raise LTAUFileError(
            f"{path} names {name}, which is not among the classes and functions a mace, e3nn "
            f"or torch model is made of: the file may carry code; {TRUST_HINT}"
        )
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except Exception as exc:  # a module may fail to import in many ways (e3nn without mace)
        raise LTAUFileError(
            f"{path} names {name}, which cannot be looked up here ({str(exc).splitlines()[0]}); "
            "is it a model of another mace or e3nn version?"
        ) from exc
    if as_class and not isinstance(found, type):
        raise LTAUFileError(f"{path} names {name}, which is not a class; {TRUST_HINT}")
    if as_class and f"{found.__module__}.{found.__qualname__}" != name:
        # A class another package defines, imported into an allowlisted module (e.g. sympy's
        # Poly in e3nn, whose constructor evaluates strings): not part of any model.
        raise LTAUFileError(
            f"{path} names {name}, which is {found.__module__}.{found.__qualname__} imported "
            f"into an allowed package, not a model class; {TRUST_HINT}"
        )
    return found


def checked_reduce_graph_module(body: dict, import_block: str) -> torch.nn.Module:
    """``torch.fx.graph_module.reduce_graph_module`` after :func:`check_fx_source` has
    accepted the source it would execute."""
    from torch.fx.graph_module import reduce_graph_module

    if not isinstance(body, dict) or not isinstance(import_block, str):
        raise LTAUFileError("a torch.fx graph module in the file is malformed")
    source = body.get("_code", body.get("code"))
    if not isinstance(source, str):
        raise LTAUFileError("a torch.fx graph module in the file has no source")
    check_fx_source(source, import_block)
    return reduce_graph_module(body, import_block)


def check_fx_source(source: str, import_block: str) -> None:
    """Accept only what torch.fx generates for tensor code: import lines of the fixed set
    torch.fx writes, and one ``forward(self, ...)`` of straight-line assignments whose calls
    are torch's tensor operations (``torch.*`` builtins, ``torch.functional`` and
    ``torch.nn.functional``), methods of local values, submodules of ``self`` and ``getattr``
    of a constant name, with no dunder or private attribute anywhere. Raises LTAUFileError."""
    for line in import_block.splitlines():
        if line.strip() and not _FX_IMPORT_LINE.fullmatch(line.strip()):
            raise LTAUFileError(f"a torch.fx graph module imports {line.strip()!r}; {TRUST_HINT}")
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise LTAUFileError(f"a torch.fx graph module has invalid source: {exc}") from exc
    functions = tree.body
    if len(functions) != 1 or not isinstance(functions[0], ast.FunctionDef):
        raise LTAUFileError(f"a torch.fx graph module holds more than one forward; {TRUST_HINT}")
    forward = functions[0]
    if forward.name != "forward" or forward.decorator_list or forward.returns:
        raise LTAUFileError(f"a torch.fx graph module defines {forward.name!r}; {TRUST_HINT}")
    local = {a.arg for a in forward.args.args + forward.args.kwonlyargs}
    if forward.args.vararg or forward.args.kwarg:
        raise LTAUFileError(f"a torch.fx graph module takes *args/**kwargs; {TRUST_HINT}")
    for node in ast.walk(forward):
        if not isinstance(node, _FX_NODES):
            raise LTAUFileError(
                f"a torch.fx graph module contains {type(node).__name__} code, which torch.fx "
                f"does not generate for tensor operations; {TRUST_HINT}"
            )
        if isinstance(node, ast.Assign):
            local |= {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            raise LTAUFileError(
                f"a torch.fx graph module reads the private attribute {node.attr!r}; {TRUST_HINT}"
            )
    for node in ast.walk(forward):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id not in local and node.id not in _FX_GLOBALS:
                raise LTAUFileError(f"a torch.fx graph module uses {node.id!r}; {TRUST_HINT}")
        elif isinstance(node, ast.Call):
            _check_fx_call(node, local)


def _check_fx_call(call: ast.Call, local: set[str]) -> None:
    target = call.func
    chain = _dotted(target)
    if chain is None:
        raise LTAUFileError(f"a torch.fx graph module makes a computed call; {TRUST_HINT}")
    root, *attributes = chain
    if root == "getattr":
        if attributes or len(call.args) != 2 or not isinstance(call.args[1], ast.Constant):
            raise LTAUFileError(f"a torch.fx graph module uses getattr freely; {TRUST_HINT}")
        name = call.args[1].value
        if not isinstance(name, str) or name.startswith("_"):
            raise LTAUFileError(f"a torch.fx graph module reads {name!r}; {TRUST_HINT}")
        return
    if root in local:  # a method of a local value or a submodule of self
        if not attributes:
            raise LTAUFileError(f"a torch.fx graph module calls the value {root!r}; {TRUST_HINT}")
        return
    if root in ("fx_pytree", "pytree") and len(attributes) == 1:
        return
    if root == "torch" and attributes and _is_tensor_operation(attributes):
        return
    raise LTAUFileError(
        f"a torch.fx graph module calls {'.'.join(chain)}, which is not a tensor operation; "
        f"{TRUST_HINT}"
    )


def _dotted(node: ast.expr) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _is_tensor_operation(attributes: list[str]) -> bool:
    found: Any = torch
    for attribute in attributes:
        found = getattr(found, attribute, None)
        if found is None:
            return False
    if attributes[-1] in _DENIED_TORCH_OPS:
        return False
    module = getattr(found, "__module__", None) or ""
    is_builtin = type(found).__name__ == "builtin_function_or_method"
    return is_builtin or module in ("torch.functional", "torch.nn.functional")


def state_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 (hex) of a module's parameters and buffers: names, dtypes, shapes and values in
    name order. The same trained weights give the same fingerprint whatever file or device
    they come from; an estimator stores it to recognise the model its descriptors came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        values = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{values.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(values.view(torch.uint8).numpy().tobytes() if values.numel() else b"")
    return digest.hexdigest()
