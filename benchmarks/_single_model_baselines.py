"""Single-model uncertainty baselines for the ensemble benchmark: a latent GMM and LLPR.

Each gives one positive scalar per atom, ``u`` (eV/Å), fitted on the training atoms and tuned on
a validation split only; :func:`_baselines.maxwell_mass` turns ``u`` into a distribution of the
force-error norm (isotropic Gaussian error with ``E||e||^2 = u^2``) and
:func:`_baselines.calibrate_and_predict` gives it the same validation-only isotonic
recalibration as every other method.

* ``gmm_latent`` (Zhu, Batzner, Musaelian, Kozinsky, J. Chem. Phys. 158, 164111, 2023):
  scikit-learn's :class:`~sklearn.mixture.GaussianMixture` on the standardised descriptors
  LTAU uses, one mixture per element (an element's descriptors form their own cloud, so one
  joint mixture would spend components on telling elements apart). Each element's number of
  components is the one with the lowest mean negative log-likelihood of that element's
  validation atoms: held-out likelihood measures what the score is used for (how typical a
  new atom is), where BIC's ``log n`` penalty is asymptotic and grows with the training size.
  The uncertainty score is the NLL of a query's descriptor (nats); it becomes a scale through
  ``log u = c + b * z`` (``z`` the standardised NLL, ``b >= 0``), fitted by the Maxwell
  likelihood of the validation force errors (:func:`fit_log_linear_scale`).
* ``llpr``, last-layer prediction rigidity (Bigi, Chong, Ceriotti, Grasselli, 2024): with ``F``
  ``(n_train_atoms, p)`` the training atoms' last-layer features,
  ``u^2 = alpha * f^T (F^T F + lambda I)^-1 f``, computed in float64 from the eigendecomposition
  of ``F^T F``; ``lambda`` (on a grid relative to the mean eigenvalue) and ``alpha`` (closed
  form for each ``lambda``) minimise the Maxwell NLL of the validation force errors.
  :func:`mace_last_layer_features` gives MACE's last-layer features: the inputs of the final
  linear maps of its readouts (the invariant features of every layer but the last, read by the
  linear readouts, and the hidden activations of the last, non-linear readout), so the atomic
  energy is linear in them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar

from ltau.exceptions import LTAUInputError

COMPONENTS = (1, 2, 4, 8, 16)
"""Numbers of mixture components tried per element."""
LAMBDAS = tuple(10.0**k for k in range(-8, 3))
"""LLPR regularisers tried, relative to the mean eigenvalue of ``F^T F``."""
_MAX_SLOPE = 5.0  # bound of b in log u = c + b z (z standardised)
_TINY = 1e-300


def _features(values: np.ndarray, name: str, width: int | None = None) -> np.ndarray:
    """``values`` as a finite, non-empty float64 ``(n, d)`` matrix (``d == width`` if given)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise LTAUInputError(f"{name} must be a non-empty 2-D array; got shape {array.shape}")
    if width is not None and array.shape[1] != width:
        raise LTAUInputError(f"{name} have {array.shape[1]} features; expected {width}")
    if not np.all(np.isfinite(array)):
        raise LTAUInputError(f"{name} hold NaN or infinity")
    return array


def _errors(values: np.ndarray, n: int, name: str = "validation errors") -> np.ndarray:
    """Force-error norms (eV/Å) as finite non-negative float64 ``(n,)``, not all zero."""
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (n,):
        raise LTAUInputError(f"{name} must have shape ({n},); got {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array < 0) or not np.any(array > 0):
        raise LTAUInputError(f"{name} must be finite, non-negative and not all zero")
    return array


def _labels(values: Sequence | np.ndarray | None, n: int, name: str) -> np.ndarray:
    """One element label per atom (``None``: all atoms share one label)."""
    if values is None:
        return np.zeros(n, dtype=np.int64)
    array = np.asarray(values)
    if array.shape != (n,):
        raise LTAUInputError(
            f"{name} must have one label per atom, shape ({n},); got {array.shape}"
        )
    return array


def maxwell_nll(errors: np.ndarray, scale: np.ndarray) -> float:
    """Mean negative log-likelihood (nats) of error norms ``(n,)`` under the Maxwell law of
    ``||e||`` for ``e ~ N(0, (u^2 / 3) I_3)``, ``u = scale`` ``(n,)`` (eV/Å)."""
    a2 = np.maximum(np.asarray(scale, dtype=np.float64) ** 2 / 3.0, _TINY)
    r = np.maximum(np.asarray(errors, dtype=np.float64), _TINY)
    log_pdf = 0.5 * np.log(2 / np.pi) + 2 * np.log(r) - 1.5 * np.log(a2) - r**2 / (2 * a2)
    return float(-np.mean(log_pdf))


def _best_prefactor(errors: np.ndarray, shape: np.ndarray) -> float:
    """The ``s > 0`` minimising the Maxwell NLL of ``errors`` with scales ``s * shape``:
    ``s^2 = mean(errors^2 / shape^2)``."""
    return float(np.sqrt(np.mean(errors**2 / np.maximum(shape, _TINY) ** 2)))


@dataclass(frozen=True)
class LogLinearScale:
    """``u = exp(c + b * (score - centre) / spread)`` (eV/Å), monotone in the score."""

    c: float
    b: float
    centre: float
    spread: float

    def __call__(self, score: np.ndarray) -> np.ndarray:
        z = (np.asarray(score, dtype=np.float64) - self.centre) / self.spread
        return np.exp(self.c + self.b * np.clip(z, -50.0, 50.0))


def fit_log_linear_scale(score: np.ndarray, errors: np.ndarray) -> LogLinearScale:
    """The :class:`LogLinearScale` with the lowest Maxwell NLL of the validation ``errors``
    ``(n,)`` (eV/Å) given their atoms' scores ``(n,)``: ``b`` in ``[0, 5]`` by a bounded
    scalar search, ``c`` in closed form for each ``b``."""
    score = np.asarray(score, dtype=np.float64)
    if score.ndim != 1 or score.size < 2 or not np.all(np.isfinite(score)):
        raise LTAUInputError("scores must be a finite 1-D array of at least 2 values")
    errors = _errors(errors, score.size)
    centre = float(np.median(score))
    spread = float(np.std(score)) or 1.0
    z = np.clip((score - centre) / spread, -50.0, 50.0)

    def nll(b: float) -> float:
        shape = np.exp(b * z)
        return maxwell_nll(errors, _best_prefactor(errors, shape) * shape)

    b = float(minimize_scalar(nll, bounds=(0.0, _MAX_SLOPE), method="bounded").x)
    c = float(np.log(_best_prefactor(errors, np.exp(b * z))))
    return LogLinearScale(c, b, centre, spread)


@dataclass
class GMMLatent:
    """Per-element Gaussian mixtures on standardised descriptors (see the module docstring).

    ``mean`` / ``std``: ``(d,)`` the training descriptors' standardisation; ``mixtures``:
    element label -> fitted :class:`~sklearn.mixture.GaussianMixture`; ``n_components``: the
    validated choice per element; ``validation_nll``: element -> {components: mean
    validation NLL, or training BIC for an element without validation atoms};
    ``scale_map``: NLL -> ``u`` (eV/Å), None until :meth:`fit_scale`.
    """

    mean: np.ndarray
    std: np.ndarray
    mixtures: dict = field(default_factory=dict)
    n_components: dict = field(default_factory=dict)
    validation_nll: dict = field(default_factory=dict)
    scale_map: LogLinearScale | None = None

    def score(self, descriptors: np.ndarray, elements: Sequence | np.ndarray | None = None):
        """Negative log-likelihood (nats) of each descriptor ``(n, d)`` under its element's
        mixture, ``(n,)``; larger is less typical of the training atoms."""
        data = (_features(descriptors, "descriptors", self.mean.size) - self.mean) / self.std
        labels = _labels(elements, data.shape[0], "elements")
        unknown = sorted(set(np.unique(labels).tolist()) - set(self.mixtures))
        if unknown:
            raise LTAUInputError(f"no training atoms of element(s) {unknown}")
        nll = np.empty(data.shape[0])
        for label, mixture in self.mixtures.items():
            rows = labels == label
            if rows.any():
                nll[rows] = -mixture.score_samples(data[rows])
        return nll

    def fit_scale(self, descriptors, elements, errors) -> GMMLatent:
        """Fit :attr:`scale_map` on validation atoms (descriptors, elements, error norms)."""
        nll = self.score(descriptors, elements)
        self.scale_map = fit_log_linear_scale(nll, errors)
        return self

    def uncertainty(self, descriptors, elements=None) -> np.ndarray:
        """``u`` ``(n,)`` (eV/Å) for :func:`_baselines.maxwell_mass`."""
        if self.scale_map is None:
            raise LTAUInputError("fit_scale has not been called on validation errors")
        return self.scale_map(self.score(descriptors, elements))


def gmm_latent(
    train_descriptors: np.ndarray,
    validation_descriptors: np.ndarray,
    validation_errors: np.ndarray,
    *,
    train_elements: Sequence | np.ndarray | None = None,
    validation_elements: Sequence | np.ndarray | None = None,
    components: Sequence[int] = COMPONENTS,
    seed: int = 0,
    without_validation: str = "error",
) -> GMMLatent:
    """Fit the latent GMM baseline: per element, the number of components among
    ``components`` with the lowest validation NLL, then the NLL -> ``u`` map on the validation
    force errors ``(n_validation,)`` (eV/Å). Descriptors ``(n, d)``; elements: one label per
    atom (None: a single mixture). An element with no validation atoms is an error, or with
    ``without_validation="bic"`` gets the count with the lowest BIC on its training atoms
    (small labelled sets, as in active learning)."""
    from sklearn.mixture import GaussianMixture

    train = _features(train_descriptors, "training descriptors")
    validation = _features(validation_descriptors, "validation descriptors", train.shape[1])
    errors = _errors(validation_errors, validation.shape[0])
    train_labels = _labels(train_elements, train.shape[0], "training elements")
    validation_labels = _labels(validation_elements, validation.shape[0], "validation elements")
    if without_validation not in ("error", "bic"):
        raise LTAUInputError(
            f"without_validation must be 'error' or 'bic'; got {without_validation!r}"
        )
    if not components or any(int(c) != c or c < 1 for c in components):
        raise LTAUInputError(f"components must be positive integers; got {list(components)}")
    mean = train.mean(axis=0)
    std = np.where(train.std(axis=0) > 0, train.std(axis=0), 1.0)
    model = GMMLatent(mean, std)
    train, validation = (train - mean) / std, (validation - mean) / std
    for label in np.unique(train_labels).tolist():
        rows = train[train_labels == label]
        held_out = validation[validation_labels == label]
        if held_out.shape[0] == 0 and without_validation != "bic":
            raise LTAUInputError(f"no validation atoms of element {label!r} to choose on")
        scores = {}
        fitted = {}
        for n in sorted({int(c) for c in components if 2 <= c * 2 <= rows.shape[0]}):
            mixture = GaussianMixture(n, covariance_type="full", reg_covar=1e-6, random_state=seed)
            fitted[n] = mixture.fit(rows)
            if held_out.shape[0]:
                scores[n] = float(-mixture.score(held_out))
            else:
                scores[n] = float(mixture.bic(rows))
        if not fitted:
            raise LTAUInputError(f"element {label!r} has too few training atoms for a mixture")
        best = min(scores, key=scores.get)
        model.mixtures[label] = fitted[best]
        model.n_components[label] = best
        model.validation_nll[label] = scores
    return model.fit_scale(validation_descriptors, validation_labels, errors)


@dataclass
class LLPR:
    """Last-layer prediction rigidity: ``u^2 = alpha * f^T (F^T F + lambda I)^-1 f``.

    ``eigenvalues`` ``(p,)`` / ``eigenvectors`` ``(p, p)``: the eigendecomposition of
    ``F^T F`` (float64); ``lam``: the chosen regulariser (absolute); ``alpha``: the scale
    (eV²/Å² per unit of ``f^T(...)^-1 f``); ``validation_nll``: relative lambda -> Maxwell NLL.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    lam: float = 0.0
    alpha: float = 1.0
    validation_nll: dict = field(default_factory=dict)

    def rigidity_variance(self, features: np.ndarray, lam: float | None = None) -> np.ndarray:
        """``f^T (F^T F + lambda I)^-1 f`` ``(n,)`` for features ``(n, p)``."""
        data = _features(features, "last-layer features", self.eigenvalues.size)
        lam = self.lam if lam is None else lam
        projected = data @ self.eigenvectors
        return np.sum(projected**2 / (self.eigenvalues + lam), axis=1)

    def uncertainty(self, features: np.ndarray) -> np.ndarray:
        """``u = sqrt(alpha * f^T (F^T F + lambda I)^-1 f)`` ``(n,)`` (eV/Å)."""
        return np.sqrt(self.alpha * self.rigidity_variance(features))


def llpr(
    train_features: np.ndarray,
    validation_features: np.ndarray,
    validation_errors: np.ndarray,
    *,
    lambdas: Sequence[float] = LAMBDAS,
) -> LLPR:
    """Fit LLPR on training last-layer features ``(n_train, p)``; choose ``lambda`` among
    ``lambdas`` (times the mean eigenvalue of ``F^T F``) and ``alpha`` by the Maxwell NLL of
    the validation force errors ``(n_validation,)`` (eV/Å)."""
    train = _features(train_features, "training last-layer features")
    validation = _features(validation_features, "validation last-layer features", train.shape[1])
    errors = _errors(validation_errors, validation.shape[0])
    if not lambdas or any(not np.isfinite(x) or x <= 0 for x in lambdas):
        raise LTAUInputError(f"lambdas must be positive numbers; got {list(lambdas)}")
    eigenvalues, eigenvectors = np.linalg.eigh(train.T @ train)
    eigenvalues = np.maximum(eigenvalues, 0.0)  # F^T F is positive semi-definite
    unit = float(eigenvalues.mean()) or 1.0
    model = LLPR(eigenvalues, eigenvectors)
    best = None
    for relative in lambdas:
        variance = model.rigidity_variance(validation, relative * unit)
        shape = np.sqrt(np.maximum(variance, _TINY))
        prefactor = _best_prefactor(errors, shape)
        nll = maxwell_nll(errors, prefactor * shape)
        model.validation_nll[float(relative)] = nll
        if best is None or nll < best[0]:
            best = (nll, relative * unit, prefactor**2)
    _, model.lam, model.alpha = best
    return model


def mace_last_layer_features(trained, structures, batch_size: int = 20) -> np.ndarray:
    """MACE's last-layer features, float64 ``(n_atoms, p)`` in atom-id order: the invariant
    features of every interaction layer but the last (what the linear readouts read) and the
    hidden activations of the last, non-linear readout (what its final linear map reads).

    ``trained`` is a :class:`ltau.integrations.mace.TrainedMACE`, ``structures`` a
    :class:`ltau.atomistic.structures.LabelledStructures`. For a multihead model the hidden
    activations of every head are kept (the head mask comes after them)."""
    from ltau.integrations.mace import evaluate_mace

    model = trained.model
    last = model.readouts[-1]
    if not hasattr(last, "non_linearity"):
        raise LTAUInputError(f"the last readout is a {type(last).__name__}, not non-linear")
    hidden: list[np.ndarray] = []
    hook = last.non_linearity.register_forward_hook(
        lambda _module, _inputs, output: hidden.append(output.detach().cpu().double().numpy())
    )
    try:
        evaluation = evaluate_mace(trained, structures, batch_size=batch_size)
    finally:
        hook.remove()
    per_layer = evaluation.descriptors.shape[1] // int(model.num_interactions)
    earlier = evaluation.descriptors[:, : evaluation.descriptors.shape[1] - per_layer]
    return np.concatenate([earlier.astype(np.float64), np.concatenate(hidden)], axis=1)
