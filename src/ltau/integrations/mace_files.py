"""ltau's own MACE model files: the weights as a state dict and the architecture as JSON.

:meth:`~ltau.integrations.mace.TrainedMACE.save` writes a ``torch.save`` archive holding only
plain data: strings, numbers and tensors. Loading it uses torch's ``weights_only`` unpickler with
no extra globals, then rebuilds the model from its architecture and loads the weights, so the
file cannot name, import or run anything.

The architecture is what mace itself extracts to rebuild a model
(``mace.tools.scripts_utils.extract_config_mace_model``: the constructor arguments of
``ScaleShiftMACE``), encoded as JSON: irreps as strings, arrays as lists with their dtype, and
the classes and activation it names by their import path. On loading, a class must be one of
``mace.modules``' module classes and an activation one of
:data:`~ltau.integrations.model_files.ALLOWED_FUNCTIONS`, or the file is refused.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import mace  # must be imported before e3nn
import numpy as np
import torch
from e3nn import o3
from mace import modules as mace_modules
from mace.tools.scripts_utils import extract_config_mace_model

from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.integrations.model_files import ALLOWED_FUNCTIONS

MODEL_CLASSES = ("ScaleShiftMACE", "MACELES", "PolarMACE")
"""mace model classes whose architecture mace can extract, and so ltau can store."""
_CLASS_PACKAGE = "mace.modules."
_ARRAY_DTYPES = {"float32", "float64", "int32", "int64"}


def mace_architecture(model: torch.nn.Module) -> dict[str, Any]:
    """The JSON-serialisable architecture of a mace model: ``{"model_class": name,
    "arguments": {...}}``, from which :func:`build_mace` rebuilds it (without weights)."""
    name = type(model).__name__
    if name not in MODEL_CLASSES or not hasattr(mace_modules, name):
        raise LTAUInputError(
            f"a {name} cannot be saved as plain data; ltau stores mace models of the classes "
            f"{', '.join(MODEL_CLASSES)}"
        )
    arguments = extract_config_mace_model(model)
    return {
        "model_class": name,
        "arguments": {key: _encode(value, key) for key, value in arguments.items()},
    }


def build_mace(architecture: object, source: Path) -> torch.nn.Module:
    """A new mace model (random weights, current default dtype) built from what
    :func:`mace_architecture` stored; anything else in ``architecture`` is refused."""
    if not isinstance(architecture, dict) or set(architecture) != {"model_class", "arguments"}:
        raise LTAUFileError(f"{source}: its model architecture is malformed")
    name, arguments = architecture["model_class"], architecture["arguments"]
    if name not in MODEL_CLASSES or not hasattr(mace_modules, name):
        raise LTAUFileError(f"{source}: {name!r} is not a mace model class ltau stores")
    if not isinstance(arguments, dict):
        raise LTAUFileError(f"{source}: its model arguments are malformed")
    decoded = {key: _decode(value, key, source) for key, value in arguments.items()}
    try:
        return getattr(mace_modules, name)(**decoded)
    except Exception as exc:  # mace raises many kinds on arguments it does not accept
        raise LTAUFileError(
            f"{source}: its architecture does not build a {name} with this mace "
            f"({mace.__version__}): {exc}"
        ) from exc


def _encode(value: Any, key: str) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, o3.Irreps):
        return {"irreps": str(value)}
    if isinstance(value, torch.Tensor | np.ndarray):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        return {"array": array.tolist(), "dtype": str(array.dtype)}
    if isinstance(value, type) and issubclass(value, torch.nn.Module):
        return {"class": f"{value.__module__}.{value.__qualname__}"}
    if callable(value) and f"{value.__module__}.{value.__name__}" in ALLOWED_FUNCTIONS:
        return {"function": f"{value.__module__}.{value.__name__}"}
    if isinstance(value, list | tuple):
        return [_encode(item, key) for item in value]
    if isinstance(value, dict) and all(isinstance(name, str) for name in value):
        return {"mapping": {name: _encode(item, key) for name, item in value.items()}}
    raise LTAUInputError(
        f"the model's architecture argument {key!r} ({type(value).__name__}) cannot be stored "
        "as plain data"
    )


def _decode(value: Any, key: str, source: Path) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_decode(item, key, source) for item in value]
    if not isinstance(value, dict) or len(value) not in (1, 2):
        raise LTAUFileError(f"{source}: the architecture argument {key!r} is malformed")
    if set(value) == {"irreps"} and isinstance(value["irreps"], str):
        return _checked(lambda: o3.Irreps(value["irreps"]), key, source)
    if set(value) == {"array", "dtype"} and value["dtype"] in _ARRAY_DTYPES:
        return _checked(lambda: np.asarray(value["array"], dtype=value["dtype"]), key, source)
    if set(value) == {"class"}:
        return _module_class(value["class"], key, source)
    if set(value) == {"function"} and value["function"] in ALLOWED_FUNCTIONS:
        module_name, _, name = value["function"].rpartition(".")
        return getattr(importlib.import_module(module_name), name)
    if set(value) == {"mapping"} and isinstance(value["mapping"], dict):
        return {name: _decode(item, key, source) for name, item in value["mapping"].items()}
    raise LTAUFileError(
        f"{source}: the architecture argument {key!r} names something ltau does not build "
        f"({json.dumps(value)[:80]})"
    )


def _module_class(name: object, key: str, source: Path) -> type:
    """A module class of ``mace.modules`` named by its import path (nothing is imported that
    mace has not imported already)."""
    if not isinstance(name, str) or not name.startswith(_CLASS_PACKAGE):
        raise LTAUFileError(f"{source}: {key!r} names {name!r}, which is not a mace module class")
    module_name, _, attribute = name.rpartition(".")
    module = sys.modules.get(module_name)
    found = getattr(module, attribute, None) if not attribute.startswith("_") else None
    if not (isinstance(found, type) and issubclass(found, torch.nn.Module)):
        raise LTAUFileError(f"{source}: {key!r} names {name!r}, which is not a mace module class")
    return found


def _checked(build: Any, key: str, source: Path) -> Any:
    try:
        return build()
    except (ValueError, TypeError, AssertionError) as exc:
        raise LTAUFileError(
            f"{source}: the architecture argument {key!r} is malformed ({exc})"
        ) from exc
