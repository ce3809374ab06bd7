"""One entry point for the force-field model files users have: :func:`load_forcefield`.

It recognises a file by its content, not its name:

* a ``torch.save`` archive naming mace classes: a ``mace_run_train`` ``.model`` file
  (fine-tuned or not) or ltau's own MACE file, loaded without running code
  (:mod:`ltau.integrations.model_files`);
* a ``torch.save`` archive naming nequip classes: ltau's own NequIP file (needs the NequIP
  environment and ``trusted=True``);
* a TorchScript archive: a deployed model (:mod:`ltau.integrations.deployed`; nequip 0.5/0.6
  ``nequip-deploy`` files);
* a ``torch.package`` archive (a nequip 0.19 packaged model): it holds Python code, so it
  needs ``trusted=True``.

Each gives a :class:`ForceField`: its kind, a fingerprint of its weights, how to evaluate
structures (energies, forces, invariant descriptors, force errors) and how to build the ASE
calculator with an estimator. mace and nequip are imported only for their own files, so this
module serves both environments.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltau.atomistic.calculator import LTAUCalculatorBase
from ltau.atomistic.pipeline import Evaluation
from ltau.atomistic.structures import LabelledStructures
from ltau.estimator import LTAUEstimator
from ltau.exceptions import LTAUFileError, LTAUInputError

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


def archive_kind(path: Path) -> str:
    """``"torch-save"``, ``"torchscript"`` or ``"torch-package"``, from the archive's entries."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise LTAUFileError(f"{path} is not a model file (not a PyTorch archive): {exc}") from exc
    if any("/code/" in name for name in names) and any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    if any(name.endswith("/data.pkl") for name in names):
        return "torch-save"
    if any(name.endswith(".data/version") for name in names):
        return "torch-package"
    raise LTAUFileError(f"{path} is a zip archive but not a PyTorch model")


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
    if kind == "torch-package":
        return _nequip_package(path, device, trusted)
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as exc:
        raise LTAUFileError(f"{path} is not a readable PyTorch model file: {exc}") from exc
    packages = {name.split(".")[0] for name in names}
    if "mace" in packages:
        return _mace(path, device, trusted, head)
    if "nequip" in packages:
        return _nequip_saved(path, device, trusted)
    from ltau.integrations.model_files import load_pickled_model

    load_pickled_model(path, trusted=trusted)  # names what it refuses, if anything
    raise LTAUFileError(
        f"{path} is a torch.save file of no model kind ltau knows (it names no mace or nequip "
        "classes)"
    )


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


def _nequip_saved(path: Path, device: str, trusted: bool) -> ForceField:
    raise LTAUFileError(
        f"{path} is a NequIP model saved by ltau; load it in the NequIP environment with "
        "ltau.integrations.nequip.TrainedNequIP.load"
    )


def _nequip_package(path: Path, device: str, trusted: bool) -> ForceField:
    raise LTAUFileError(
        f"{path} is a torch.package archive (a nequip packaged model), which holds Python "
        "code; it is not supported yet"
    )
