"""One entry point for the force-field model files users have: :func:`load_forcefield`.

It recognises a file by its content, not its name:

* a ``torch.save`` archive naming mace classes: a ``mace_run_train`` ``.model`` file
  (fine-tuned or not) or ltau's own MACE file, loaded without running code
  (:mod:`ltau.integrations.model_files`);
* a ``torch.save`` archive of plain data: ltau's own NequIP file (weights and settings, loaded
  without running code) or a ``nequip-train`` checkpoint (``trusted=True``: nequip builds the
  model its config names);
* a TorchScript archive: a nequip 0.19 ``nequip-compile`` ``.nequip.pth`` (its metadata has
  ``num_types``), else a deployed model (:mod:`ltau.integrations.deployed`; nequip 0.5/0.6
  ``nequip-deploy`` files);
* a ``torch.package`` archive (``nequip-package``'s ``.nequip.zip``): it holds Python code, so
  it needs ``trusted=True``;
* an AOTInductor archive (``nequip-compile``'s ``.nequip.pt2``): a native library, so it needs
  ``trusted=True``.

NequIP files are read by :func:`ltau.integrations.nequip.load_nequip_model` (NequIP
environment).

Each gives a :class:`ForceField`: its kind, a fingerprint of its weights, how to evaluate
structures (energies, forces, invariant descriptors, force errors) and how to build the ASE
calculator with an estimator. mace and nequip are imported only for their own files, so this
module serves both environments.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltau.atomistic.calculator import LTAUCalculatorBase
from ltau.atomistic.pipeline import Evaluation
from ltau.atomistic.structures import LabelledStructures
from ltau.estimator import LTAUEstimator
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.integrations.model_files import archive_kind

KINDS = ("mace", "nequip", "deployed")


@dataclass
class ForceField:
    """A loaded model: ``kind`` (one of :data:`KINDS`), the file, a SHA-256 ``fingerprint``
    of its weights, the chemical symbols it knows, and the integration's functions bound to
    it."""

    kind: str
    path: Path
    fingerprint: str
    elements: list[str]
    model: Any
    evaluate_structures: Callable[[LabelledStructures, bool], Evaluation]
    calculator_factory: Callable[..., LTAUCalculatorBase]

    def evaluate(self, structures: LabelledStructures, progress: bool = False) -> Evaluation:
        """Energies (eV), forces (eV/Å), descriptors ``(n_atoms, d)`` and, for labelled
        structures, force-error norms (eV/Å) of every atom."""
        return self.evaluate_structures(structures, progress)

    def calculator(
        self, estimator: LTAUEstimator, *, atol: float = 0.1, **kwargs: Any
    ) -> LTAUCalculatorBase:
        """The ASE calculator of this model with ``estimator`` (see
        :class:`~ltau.atomistic.calculator.LTAUCalculatorBase`)."""
        return self.calculator_factory(estimator, atol=atol, **kwargs)


def load_forcefield(
    path: str | os.PathLike,
    *,
    device: str = "cpu",
    trusted: bool = False,
    head: str | None = None,
) -> ForceField:
    """Load any supported model file (see the module docstring) on ``device``. ``head``:
    the head of a multihead mace model (default: its last, the fine-tuning head)."""
    path = Path(path)
    if not path.is_file():
        raise LTAUFileError(f"the model file {path} does not exist")
    kind = archive_kind(path)
    if kind == "torchscript":
        return _deployed(path, device)
    if kind != "torch-save":
        return _nequip(path, device, trusted)
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as exc:
        raise LTAUFileError(f"{path} is not a readable PyTorch model file: {exc}") from exc
    packages = {name.split(".")[0] for name in names}
    if "mace" in packages or (not names and _plain_data_format(path) == "ltau-mace-model"):
        return _mace(path, device, trusted, head)
    return _nequip(path, device, trusted)


def _plain_data_format(path: Path) -> object:
    """The ``format`` entry of a torch-saved file that names no globals (plain data, so
    loading it with ``weights_only`` runs nothing), or None."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LTAUFileError(f"{path} is not a readable PyTorch model file: {exc}") from exc
    return payload.get("format") if isinstance(payload, dict) else None


def _mace(path: Path, device: str, trusted: bool, head: str | None) -> ForceField:
    try:
        from ltau.integrations import mace as mace_integration
    except ImportError as exc:
        raise LTAUInputError(f"{path} is a mace model: install the 'mace' extra ({exc})") from exc
    trained = mace_integration.TrainedMACE.from_file(
        path, head=head, device=device, trusted=trusted
    )

    def evaluate(structures: LabelledStructures, progress: bool) -> Evaluation:
        return mace_integration.evaluate_mace(trained, structures, progress=progress)

    def calculator(estimator: LTAUEstimator, **kwargs: Any) -> LTAUCalculatorBase:
        return mace_integration.LTAUCalculator(trained, estimator, **kwargs)

    from ase.data import chemical_symbols

    elements = [chemical_symbols[z] for z in trained.atomic_numbers]
    return ForceField("mace", path, trained.fingerprint, elements, trained, evaluate, calculator)


def _deployed(path: Path, device: str) -> ForceField:
    from ltau.integrations import deployed
    from ltau.integrations.model_files import state_fingerprint

    if device != "cpu":
        raise LTAUInputError("deployed TorchScript models run on the CPU here: use --device cpu")
    model = deployed.load_deployed_model(path)

    def evaluate(structures: LabelledStructures, progress: bool) -> Evaluation:
        return deployed.evaluate_deployed(model, structures, progress=progress)

    def calculator(estimator: LTAUEstimator, **kwargs: Any) -> LTAUCalculatorBase:
        return deployed.LTAUCalculator(model, estimator, **kwargs)

    fingerprint = state_fingerprint(model.module)
    elements = sorted(model.symbols)
    return ForceField("deployed", path, fingerprint, elements, model, evaluate, calculator)


def _nequip(path: Path, device: str, trusted: bool) -> ForceField:
    try:
        from ltau.integrations import nequip as nequip_integration
    except ImportError as exc:
        from ltau.integrations.model_files import load_pickled_model

        if archive_kind(path) == "torch-save":
            load_pickled_model(path, trusted=trusted)  # names what it refuses, if anything
        raise LTAUInputError(
            f"{path} is not a mace model; NequIP models need the NequIP environment ({exc})"
        ) from exc
    model = nequip_integration.load_nequip_model(path, device=device, trusted=trusted)

    def evaluate(structures: LabelledStructures, progress: bool) -> Evaluation:
        return nequip_integration.evaluate_nequip(model, structures, progress=progress)

    def calculator(estimator: LTAUEstimator, **kwargs: Any) -> LTAUCalculatorBase:
        return nequip_integration.LTAUCalculator(model, estimator, **kwargs)

    return ForceField(
        "nequip", path, model.fingerprint, list(model.type_names), model, evaluate, calculator
    )
