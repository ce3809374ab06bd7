"""The LTAU estimator: a query's error distribution from its nearest training samples.

``fit(descriptors, distributions)`` indexes the training descriptors; ``predict`` finds each
query's k nearest training samples (Euclidean distance in descriptor space) and averages their
error distributions, uniformly or with inverse-distance weights ``w_j = 1 / max(d_j, 1e-12)``.

Distances are Euclidean, or with ``distance_scale="local"`` divided by each training
neighbour's local spacing: ``d_ij / c_j`` with ``c_j = (s_j + m) / (2 m)``, ``s_j`` the mean
distance of training sample ``j`` to its own k nearest training samples and ``m`` the median of
``s`` (so ``c_j = 1`` at the median). A query is then far from ``j`` relative to how densely the
training set fills ``j``'s region, as in the local outlier factor; adding ``m`` keeps the scale
finite where training samples coincide. Weights and OOD scores use these distances.

Scalar outputs are linear in the neighbours' distributions, so they are computed from
per-sample statistics precomputed once (expected error at fit time, exceedance once per
``atol``) and never gather ``k x n_bins`` arrays; quantiles, intervals and the full PDF need
the mixture and are computed in batches of queries.

After :meth:`LTAUEstimator.calibrate`, predictions are also widened with the distance to the
training set (:class:`ltau.calibration.DistanceWidening`): each query's error axis is scaled by
a factor that grows with its OOD score and, when ``groups`` are given (the atoms of one
structure), with its group's mean OOD score; the calibration map then acts on the widened
distributions.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from ltau._checks import (
    as_float_matrix,
    as_probabilities,
    boolean,
    checked_errors,
    group_labels,
    positive_int,
    tolerance,
    tolerances,
)
from ltau._io import (
    atomic_h5,
    open_checked,
    read_array,
    read_attributes,
    reading,
    sign_attributes,
    write_array,
)
from ltau.calibration import (
    MIN_TOTAL_EXPONENT,
    DistanceWidening,
    calibrator_from_dict,
    make_calibrator,
)
from ltau.distributions import (
    ErrorDistributions,
    read_distributions_group,
    write_distributions_group,
)
from ltau.exceptions import LTAUFileError, LTAUInputError, NotFittedError
from ltau.histogram import Bins, edge_cdf, interpolate_cdf, interval_levels, row_chunks
from ltau.histogram import quantiles as mixture_quantiles
from ltau.index_file import (
    INDEX_FILE_MIN_ITEMS,
    IndexFileRecord,
    index_file_path,
    read_index_file,
    write_index_file,
)
from ltau.metrics import probability_integral_transform, uq_metrics
from ltau.search import NeighborIndex, index_kind_for
from ltau.structure_scoring import StructureScoring

ESTIMATOR_FORMAT = "ltau-estimator"
_ESTIMATOR_ATTRIBUTES = (
    "settings",
    "metadata",
    "n_samples",
    "descriptor_dim",
    "index_kind",
    "index_params",
    "calibration",
    "widening",
)
_ESTIMATOR_ATTRIBUTES_V1 = _ESTIMATOR_ATTRIBUTES[:-1]
Weighting = Literal["uniform", "distance"]
DistanceScale = Literal["absolute", "local"]
_MIN_DISTANCE = 1e-12
_MIXTURE_FLOATS = 1 << 22
_MIN_SCORING_GROUPS = 3
"""Fewest validation groups (structures) on which :meth:`LTAUEstimator.calibrate` fits a
structure scoring."""
"""Largest ``queries x k x n_bins`` block gathered at once when forming mixtures (32 MB)."""


_PER_QUERY_FIELDS = (
    "expected_error",
    "ood_score",
    "neighbor_indices",
    "neighbor_distances",
    "exceedance",
    "quantiles",
    "interval_lower",
    "interval_upper",
    "pdf",
    "resolution",
)


@dataclass(frozen=True)
class GroupSummary:
    """Per-group aggregates of a prediction, e.g. one row per structure of a force field.

    Every array has ``n_groups`` rows, one per distinct group id in ascending order.
    ``group_ids``: ``(n_groups,)`` the ids; ``n_samples``: ``(n_groups,)`` queries (atoms) per
    group; ``max_expected_error`` / ``mean_expected_error``: ``(n_groups,)`` in the error unit
    (eV/Å for force errors); ``max_exceedance``: ``(n_groups, len(atol))`` the largest
    ``P(error > atol)`` in the group, None if the prediction has no ``atol``;
    ``max_ood_score`` / ``mean_ood_score``: ``(n_groups,)`` in descriptor units.
    ``structure_ood_score``: ``(n_groups,)`` the structure-level OOD score of a
    :class:`~ltau.structure_scoring.StructureScoring` (``structure_scoring`` names its
    aggregate, e.g. ``"max"``), and ``ood_flag`` ``(n_groups,)`` bool: it exceeds the
    scoring's validated threshold (None without one, or without a scoring).
    """

    group_ids: np.ndarray
    n_samples: np.ndarray
    max_expected_error: np.ndarray
    mean_expected_error: np.ndarray
    max_exceedance: np.ndarray | None
    max_ood_score: np.ndarray
    mean_ood_score: np.ndarray
    atol: tuple[float, ...] = ()
    structure_ood_score: np.ndarray | None = None
    ood_flag: np.ndarray | None = None
    structure_scoring: str | None = None


@dataclass(frozen=True)
class _Neighbors:
    """One batch of queries' neighbours, ``(n, k)`` each, with what the statistics need."""

    distances: np.ndarray
    """Euclidean distances (inf where an approximate index found fewer than k)."""
    indices: np.ndarray
    """Training sample indices (-1 where missing)."""
    safe: np.ndarray
    """``indices`` with -1 replaced by 0, for gathers (their weight is 0)."""
    scaled: np.ndarray
    """:meth:`LTAUEstimator.scaled_distances`, float64."""
    ood_scores: np.ndarray
    """``(n,)`` mean scaled distance to the neighbours found."""
    complete: bool
    """Every query has all k neighbours."""

    @property
    def n(self) -> int:
        return self.indices.shape[0]


@dataclass
class LTAUPrediction:
    """Predicted error statistics for ``n`` queries (errors in the unit of the training errors).

    ``expected_error``: ``(n,)`` mean of the predicted error distribution (an expected |error|,
    not a standard deviation). ``ood_score``: ``(n,)`` mean Euclidean (not squared) distance to
    the k neighbours, in descriptor units (each divided by the neighbour's local scale with
    ``distance_scale="local"``). ``exceedance``: ``(n, len(atol))`` ``P(error > atol)``.
    ``quantiles``: ``(n, len(quantile_levels))``. ``interval_lower`` / ``interval_upper``:
    ``(n,)`` central interval at ``confidence``. ``pdf``: ``(n, n_bins)`` density on ``bins``.
    ``neighbor_indices`` / ``neighbor_distances``: ``(n, k)``, the distances always Euclidean.
    ``resolution``: ``(n,)`` the smallest error the neighbours' distributions resolve (the
    lowest :meth:`~ltau.distributions.ErrorDistributions.resolution` among them), and
    :attr:`below_resolution` flags expected errors below it.
    """

    expected_error: np.ndarray
    ood_score: np.ndarray
    neighbor_indices: np.ndarray
    neighbor_distances: np.ndarray
    atol: tuple[float, ...] = ()
    exceedance: np.ndarray | None = None
    quantile_levels: tuple[float, ...] = ()
    quantiles: np.ndarray | None = None
    confidence: float | None = None
    interval_lower: np.ndarray | None = None
    interval_upper: np.ndarray | None = None
    pdf: np.ndarray | None = None
    bins: Bins | None = None
    calibrated: bool = False
    resolution: np.ndarray | None = None

    @property
    def below_resolution(self) -> np.ndarray | None:
        """``(n,)`` bool: the expected error is below :attr:`resolution`, i.e. smaller than
        every error the query's neighbours recorded in training (only a calibration or widening
        factor below 1 can do that). Such a prediction claims more confidence than the training
        distributions resolve; None if the prediction has no resolution."""
        if self.resolution is None:
            return None
        return self.expected_error < self.resolution

    @classmethod
    def concatenate(cls, parts: Sequence[LTAUPrediction]) -> LTAUPrediction:
        """Join predictions of consecutive query batches (same options) into one."""
        if not parts:
            raise LTAUInputError("no predictions to concatenate")
        first = parts[0]
        joined = {}
        for name in _PER_QUERY_FIELDS:
            values = [getattr(part, name) for part in parts]
            joined[name] = None if values[0] is None else np.concatenate(values)
        return cls(
            **joined,
            atol=first.atol,
            quantile_levels=first.quantile_levels,
            confidence=first.confidence,
            bins=first.bins,
            calibrated=first.calibrated,
        )

    def per_group(
        self, groups: np.ndarray, scoring: StructureScoring | None = None
    ) -> GroupSummary:
        """Aggregates per group of queries, e.g. per structure: ``groups`` is an integer label
        per query, ``(n,)`` (``structures.index.configuration_of_atoms`` for atoms).
        ``scoring`` adds the structure-level OOD score and flags (an estimator's is
        ``structure_scoring_``, see :meth:`LTAUEstimator.per_structure`)."""
        labels = group_labels(groups, self.expected_error.shape[0], "query")
        group_ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        order = np.argsort(inverse, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

        def group_max(values: np.ndarray) -> np.ndarray:
            return np.maximum.reduceat(values[order], starts, axis=0)

        def group_mean(values: np.ndarray) -> np.ndarray:
            return np.bincount(inverse, weights=values, minlength=group_ids.size) / counts

        return GroupSummary(
            group_ids=group_ids,
            n_samples=counts,
            max_expected_error=group_max(self.expected_error),
            mean_expected_error=group_mean(self.expected_error),
            max_exceedance=None if self.exceedance is None else group_max(self.exceedance),
            max_ood_score=group_max(self.ood_score),
            mean_ood_score=group_mean(self.ood_score),
            atol=self.atol,
            **_structure_fields(self.ood_score, labels, scoring),
        )

    def uq_metrics(
        self,
        observed: np.ndarray,
        *,
        pit: np.ndarray | None = None,
        atol: float | None = None,
    ) -> dict[str, float | int | None]:
        """:func:`ltau.metrics.uq_metrics` of this prediction against the true errors
        ``observed`` ``(n,)``, from what it holds: the expected error and, if predicted, the
        interval, the exceedance and the PDF. ``atol``: which predicted tolerance to score
        (default the first); ``pit`` ``(n,)`` adds the miscalibration area (see
        :meth:`LTAUEstimator.probability_integral_transform`)."""
        exceedance = None
        if atol is not None or self.atol:
            atol = self.atol[0] if atol is None else tolerance(atol)
            if self.exceedance is None or atol not in self.atol:
                raise LTAUInputError(
                    f"atol={atol!r} is not among the predicted tolerances {self.atol}"
                )
            exceedance = self.exceedance[:, self.atol.index(atol)]
        has_pdf = self.pdf is not None and self.bins is not None
        return uq_metrics(
            observed,
            self.expected_error,
            lower=self.interval_lower,
            upper=self.interval_upper,
            confidence=0.9 if self.confidence is None else self.confidence,
            pit=pit,
            exceedance=exceedance,
            atol=atol,
            mass=self.pdf * self.bins.widths if has_pdf else None,
            bins=self.bins if has_pdf else None,
        )

    def columns(self) -> dict[str, np.ndarray]:
        """Per-query scalar results as named 1-D columns (for CSV or a structured array)."""
        table = {"expected_error": self.expected_error, "ood_score": self.ood_score}
        if self.resolution is not None:
            table["below_resolution"] = self.below_resolution
        if self.exceedance is not None:
            for column, atol in enumerate(self.atol):
                table[f"p_exceed_{atol:g}"] = self.exceedance[:, column]
        if self.quantiles is not None:
            for column, level in enumerate(self.quantile_levels):
                table[f"quantile_{level:g}"] = self.quantiles[:, column]
        if self.interval_lower is not None and self.interval_upper is not None:
            table[f"interval_{self.confidence:g}_lower"] = self.interval_lower
            table[f"interval_{self.confidence:g}_upper"] = self.interval_upper
        return table


class LTAUEstimator:
    """Predict a model's error distribution for new inputs from its training error trajectories.

    Parameters
    ----------
    n_neighbors:
        k, the number of nearest training samples averaged per query.
    weights:
        ``"uniform"`` (plain mean) or ``"distance"`` (inverse-distance weights).
    distance_scale:
        ``"absolute"`` (Euclidean distances) or ``"local"`` (each divided by the training
        neighbour's local spacing, see the module docstring) for weights and OOD scores.
    index:
        Neighbour search backend: ``"exact"``, ``"hnsw"``, ``"ivfpq"``, ``"opq"`` or ``"ivfsq"``
        (compressed, for large training sets: ``docs/scale.md``), or ``"auto"``: exact
        up to :data:`~ltau.search.AUTO_EXACT_LIMIT` training samples, HNSW above (see
        :mod:`ltau.search`; the kind built is ``index_.kind``).
    index_params:
        Parameters of that backend, e.g. ``{"ef_search": 128}`` or ``{"nlist": 1024, "nprobe": 32}``.
    batch_size:
        Queries processed at once (bounds memory for quantiles and PDFs).

    Notes
    -----
    As a scikit-learn estimator: the constructor only stores its arguments (checked by
    :meth:`fit`), :meth:`get_params` / :meth:`set_params` follow its signature (so
    ``sklearn.base.clone`` works), everything :meth:`fit` or :meth:`load` sets ends in ``_``
    (``index_``, ``distributions_``, ``local_scale_``, ``sample_expected_error_``,
    ``sample_resolution_``,
    ``calibrator_``, ``widening_`` and ``structure_scoring_`` after :meth:`calibrate`,
    ``metadata_``), and using the
    estimator before that raises :class:`~ltau.exceptions.NotFittedError`.
    """

    def __init__(
        self,
        n_neighbors: int = 10,
        *,
        weights: Weighting = "uniform",
        distance_scale: DistanceScale = "absolute",
        index: str = "exact",
        index_params: dict[str, int] | None = None,
        batch_size: int = 65536,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.distance_scale = distance_scale
        self.index = index
        self.index_params = index_params
        self.batch_size = batch_size

    # ------------------------------------------------------------------ fitting
    def fit(self, descriptors: np.ndarray, distributions: ErrorDistributions) -> LTAUEstimator:
        """Index training ``descriptors`` ``(n_samples, dim)``; row i has distribution i."""
        self._validate_settings()
        if not isinstance(distributions, ErrorDistributions):
            raise LTAUInputError("distributions must be an ErrorDistributions instance")
        data = as_float_matrix(descriptors, "descriptors")
        if data.shape[0] != distributions.n_samples:
            raise LTAUInputError(
                f"{data.shape[0]} descriptor rows but {distributions.n_samples} distributions"
            )
        _check_k(self.n_neighbors, data.shape[0])
        kind = index_kind_for(self.index, data.shape[0])
        neighbor_index = NeighborIndex(kind, dict(self.index_params or {})).build(data)
        training_distances = None
        if self.distance_scale == "local":
            training_distances = _training_distances(
                neighbor_index, data, min(self.n_neighbors + 1, data.shape[0]), self.batch_size
            )
        return self.fit_searched(neighbor_index, distributions, training_distances)

    def fit_searched(
        self,
        neighbor_index: NeighborIndex,
        distributions: ErrorDistributions,
        training_distances: np.ndarray | None = None,
    ) -> LTAUEstimator:
        """:meth:`fit` with the training descriptors already indexed (``neighbor_index``, of
        this estimator's ``index`` kind) and, for ``distance_scale="local"``, already searched:
        ``training_distances`` ``(n_samples, m)`` are each training sample's distances to its
        ``m >= min(n_neighbors + 1, n_samples)`` nearest training samples, itself first (as
        :meth:`kneighbors` gives them; columns beyond the first ``n_neighbors + 1`` are not
        read). Lets a search at the largest k serve every smaller one."""
        self._validate_settings()
        if not isinstance(neighbor_index, NeighborIndex):
            raise LTAUInputError(
                f"neighbor_index must be a NeighborIndex; got {type(neighbor_index).__name__}"
            )
        if not isinstance(distributions, ErrorDistributions):
            raise LTAUInputError("distributions must be an ErrorDistributions instance")
        if neighbor_index.n_items != distributions.n_samples:
            raise LTAUInputError(
                f"the index holds {neighbor_index.n_items} items but there are "
                f"{distributions.n_samples} distributions"
            )
        expected_kind = index_kind_for(self.index, neighbor_index.n_items)
        if neighbor_index.kind != expected_kind:
            raise LTAUInputError(
                f"the index is of kind {neighbor_index.kind!r}; this estimator uses "
                f"{expected_kind!r}" + (" (index='auto')" if self.index == "auto" else "")
            )
        _check_k(self.n_neighbors, neighbor_index.n_items)
        local_scale = None
        if self.distance_scale == "local":
            searched = min(self.n_neighbors + 1, neighbor_index.n_items)
            shape = np.shape(training_distances)
            if len(shape) != 2 or shape[0] != neighbor_index.n_items or shape[1] < searched:
                raise LTAUInputError(
                    f"distance_scale='local' needs the training samples' distances to their "
                    f"{searched} nearest training samples, ({neighbor_index.n_items}, {searched})"
                )
            local_scale = _local_scales(np.asarray(training_distances)[:, :searched])
        self._set_fitted(neighbor_index, distributions, local_scale)
        return self

    def _validate_settings(self) -> None:
        positive_int(self.n_neighbors, "n_neighbors")
        positive_int(self.batch_size, "batch_size")
        if self.weights not in ("uniform", "distance"):
            raise LTAUInputError(f"weights must be 'uniform' or 'distance'; got {self.weights!r}")
        if self.distance_scale not in ("absolute", "local"):
            raise LTAUInputError(
                f"distance_scale must be 'absolute' or 'local'; got {self.distance_scale!r}"
            )
        if self.index_params is not None and not isinstance(self.index_params, dict):
            raise LTAUInputError(
                f"index_params must be a dict or None; got {type(self.index_params).__name__}"
            )
        if self.index == "auto":
            if self.index_params:
                raise LTAUInputError(
                    "index='auto' chooses the index and its parameters; give index_params "
                    "with an explicit index ('exact', 'hnsw' or 'ivfpq')"
                )
        else:  # Validates the kind and its parameters.
            NeighborIndex(self.index, dict(self.index_params or {}))

    def _set_fitted(
        self,
        neighbor_index: NeighborIndex,
        distributions: ErrorDistributions,
        local_scale: np.ndarray | None = None,
    ) -> None:
        self.index_ = neighbor_index
        self.distributions_ = distributions
        # With compressed (uint8) distributions, whose rounding is ~1e-3, per-sample floats are
        # float32 (4 bytes, not 8; a relative rounding of 6e-8): see docs/scale.md. Otherwise
        # float64, so that uncompressed predictions are exactly today's.
        floats = np.float32 if distributions.is_compressed else np.float64
        self.local_scale_ = None if local_scale is None else np.asarray(local_scale, floats)
        self.sample_expected_error_ = distributions.expected_error().astype(floats)
        self.sample_resolution_ = distributions.resolution()
        self.index_file_: Path | None = None
        # Per-training-sample P(error > atol), filled per tolerance on first use.
        self._exceedance_cache_: dict[float, np.ndarray] = {}
        self.calibrator_ = None
        self.widening_: DistanceWidening | None = None
        self.structure_scoring_: StructureScoring | None = None
        self.metadata_: dict[str, Any] = {}

    @property
    def n_features_in_(self) -> int:
        """Descriptor size the estimator was fitted on."""
        return self._fitted_index("n_features_in_").dim

    @property
    def bins(self) -> Bins:
        """The bins of the training distributions (and of uncalibrated predictions)."""
        self._fitted_index("bins")
        return self.distributions_.bins

    def _fitted_index(self, method: str) -> NeighborIndex:
        """The neighbour index, or a :class:`NotFittedError` naming ``method``."""
        if not hasattr(self, "index_"):
            raise NotFittedError(
                f"LTAUEstimator.{method} needs a fitted estimator: this LTAUEstimator is not "
                "fitted yet; call fit() or load() first"
            )
        return self.index_

    # --------------------------------------------------------------- prediction
    def kneighbors(self, descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, indices)`` of the k nearest training samples, each ``(n, k)``."""
        return self._fitted_index("kneighbors").search(descriptors, self.n_neighbors)

    def scaled_distances(self, distances: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Neighbour ``distances`` ``(n, k)`` as used for weights and OOD scores: unchanged, or
        divided by the local scale ``c_j`` of each neighbour ``indices`` ``(n, k)``."""
        distances = np.asarray(distances, dtype=np.float64)
        if self.local_scale_ is None:
            return distances
        return distances / self.local_scale_[np.maximum(indices, 0)]

    def neighbor_weights(self, distances: np.ndarray) -> np.ndarray:
        """Normalised averaging weights ``(n, k)`` for neighbour ``distances`` ``(n, k)``
        (as given by :meth:`scaled_distances`)."""
        distances = np.asarray(distances, dtype=np.float64)
        found = np.isfinite(distances)
        if not found.any(axis=1).all():
            raise LTAUInputError(
                "the approximate index found no neighbour for some queries; raise nprobe/ef_search"
            )
        if self.weights == "uniform":
            raw = found.astype(np.float64)
        else:
            raw = np.where(found, 1.0 / np.maximum(distances, _MIN_DISTANCE), 0.0)
        return raw / raw.sum(axis=1, keepdims=True)

    def predict(
        self,
        descriptors: np.ndarray,
        *,
        groups: np.ndarray | None = None,
        atol: float | Sequence[float] | None = None,
        quantiles: float | Sequence[float] | None = None,
        confidence: float | None = None,
        return_pdf: bool = False,
        calibrated: bool = True,
        progress: bool = False,
    ) -> LTAUPrediction:
        """Predicted error statistics for query ``descriptors`` ``(n, dim)``.

        ``groups``: optional integer label per query ``(n,)`` (e.g. the structure each atom
        belongs to); queries with one label share a group OOD score, the mean of their OOD
        scores, which widens the calibrated distributions (see :meth:`calibrate`).
        ``atol``: tolerances for ``P(error > atol)``; ``quantiles``: levels in [0, 1];
        ``confidence``: level of a central interval (e.g. 0.9); ``return_pdf``: include the
        mixture density (on the training bins, scaled by the calibration if any);
        ``calibrated``: apply the map fitted by :meth:`calibrate` (if one was fitted).
        """
        neighbor_index = self._fitted_index("predict")
        data = as_float_matrix(descriptors, "query descriptors")
        if data.shape[1] != neighbor_index.dim:
            raise LTAUInputError(
                f"query descriptors have {data.shape[1]} features; the estimator was fitted on "
                f"{neighbor_index.dim}"
            )
        options = {
            "atol": atol,
            "quantiles": quantiles,
            "confidence": confidence,
            "return_pdf": return_pdf,
        }
        atol_values, levels, confidence = self._check_prediction_options(**options)
        group_ids = _group_ids(groups, data.shape[0])
        k = neighbor_index.checked_k(self.n_neighbors)
        starts = range(0, data.shape[0], self.batch_size)
        if progress:
            starts = tqdm(starts, desc="predicting", unit="batch")
        batches = [
            (
                start,
                self._neighbors(
                    *neighbor_index.search_checked(data[start : start + self.batch_size], k)
                ),
            )
            for start in starts
        ]
        group_scores = None
        if group_ids is not None:
            ood_scores = np.concatenate([neighbors.ood_scores for _, neighbors in batches])
            group_scores = _group_means(ood_scores, group_ids)
        parts = [
            self._aggregate(
                neighbors,
                None if group_scores is None else group_scores[start : start + neighbors.n],
                atol_values,
                levels,
                confidence,
                return_pdf,
                calibrated,
            )
            for start, neighbors in batches
        ]
        return parts[0] if len(parts) == 1 else LTAUPrediction.concatenate(parts)

    def predict_from_neighbors(
        self,
        distances: np.ndarray,
        indices: np.ndarray,
        *,
        groups: np.ndarray | None = None,
        atol: float | Sequence[float] | None = None,
        quantiles: float | Sequence[float] | None = None,
        confidence: float | None = None,
        return_pdf: bool = False,
        calibrated: bool = True,
    ) -> LTAUPrediction:
        """The aggregation step of :meth:`predict`, given the neighbours already found.

        ``distances`` (Euclidean, inf where missing) and ``indices`` (-1 where missing) have
        shape ``(n, k)``, as returned by :meth:`kneighbors`; ``groups`` as in :meth:`predict`.
        """
        self._fitted_index("predict_from_neighbors")
        atol_values, levels, confidence = self._check_prediction_options(
            atol, quantiles, confidence, return_pdf
        )
        distances = np.asarray(distances)
        indices = np.asarray(indices)
        if distances.ndim != 2 or distances.shape != indices.shape:
            raise LTAUInputError(
                f"distances {distances.shape} and indices {indices.shape} must both be (n, k)"
            )
        group_ids = _group_ids(groups, distances.shape[0])
        neighbors = self._neighbors(distances, indices)
        group_scores = None
        if group_ids is not None:
            self._weights(neighbors)  # refuses queries without any neighbour
            group_scores = _group_means(neighbors.ood_scores, group_ids)
        return self._aggregate(
            neighbors,
            group_scores,
            atol_values,
            levels,
            confidence,
            return_pdf,
            calibrated,
        )

    def _neighbors(self, distances: np.ndarray, indices: np.ndarray) -> _Neighbors:
        """What weights, OOD scores and gathers need of a batch's neighbours ``(n, k)``."""
        complete = bool(np.isfinite(distances).all())
        safe = indices if indices.min() >= 0 else np.maximum(indices, 0)
        scaled = self.scaled_distances(distances, safe)
        ood_scores = scaled.sum(axis=1) / scaled.shape[1] if complete else _ood_scores(scaled)
        return _Neighbors(distances, indices, safe, scaled, ood_scores, complete)

    def _weights(self, neighbors: _Neighbors) -> np.ndarray:
        """:meth:`neighbor_weights` of ``neighbors``; without missing neighbours no mask is
        formed (and uniform weights are ``1 / k``)."""
        if not neighbors.complete:
            return self.neighbor_weights(neighbors.scaled)
        if self.weights == "uniform":
            return np.full(neighbors.scaled.shape, 1.0 / neighbors.scaled.shape[1])
        raw = 1.0 / np.maximum(neighbors.scaled, _MIN_DISTANCE)
        return raw / raw.sum(axis=1, keepdims=True)

    def _aggregate(
        self,
        neighbors: _Neighbors,
        group_scores: np.ndarray | None,
        atol_values: np.ndarray,
        levels: np.ndarray,
        confidence: float | None,
        return_pdf: bool,
        calibrated: bool,
    ) -> LTAUPrediction:
        """Neighbours ``(n, k)`` -> predicted statistics (options already validated)."""
        weights = self._weights(neighbors)
        safe, ood_scores = neighbors.safe, neighbors.ood_scores
        calibrator = self.calibrator_ if calibrated else None
        factors = None
        if calibrator is not None and self.widening_ is not None:
            factors = self.widening_.factors(ood_scores, group_scores)
        needs_mixture = bool(levels.size) or confidence is not None or return_pdf
        needs_mixture |= calibrator is not None and not calibrator.expected_error_is_linear
        needs_mixture |= factors is not None and bool(atol_values.size)
        mixture = self._mixture(weights, safe) if needs_mixture else None
        # The mixture's edge CDF, formed once for the statistics that read it.
        cdf = None if mixture is None else edge_cdf(mixture)
        expected = np.einsum("qk,qk->q", weights, self.sample_expected_error_[safe])
        if calibrator is not None:
            expected = (
                calibrator.expected_error_from_raw(expected)
                if calibrator.expected_error_is_linear
                else calibrator.expected_error_from_cdf(cdf, self.bins)
            )
        widened = (lambda values: values) if factors is None else (lambda values: values * factors)
        prediction = LTAUPrediction(
            expected_error=widened(expected),
            ood_score=ood_scores,
            neighbor_indices=neighbors.indices,
            neighbor_distances=neighbors.distances,
            atol=tuple(float(value) for value in atol_values),
            quantile_levels=tuple(float(value) for value in levels),
            confidence=confidence,
            bins=self.bins,
            calibrated=calibrator is not None,
            resolution=self._resolution(neighbors, weights),
        )
        if atol_values.size and factors is not None:
            prediction.exceedance = np.stack(
                [
                    calibrator.exceedance_from_raw(
                        1.0 - interpolate_cdf(cdf, self.bins, float(value) / factors)
                    )
                    for value in np.atleast_1d(calibrator.raw_tolerance(atol_values))
                ],
                axis=1,
            )
        elif atol_values.size:
            raw_atol = atol_values if calibrator is None else calibrator.raw_tolerance(atol_values)
            exceedance = np.stack(
                [
                    np.einsum("qk,qk->q", weights, self._sample_exceedance(float(value))[safe])
                    for value in np.atleast_1d(raw_atol)
                ],
                axis=1,
            )
            if calibrator is not None:
                exceedance = calibrator.exceedance_from_raw(exceedance)
            prediction.exceedance = exceedance
        if levels.size:
            prediction.quantiles = self._quantiles(mixture, levels, calibrator)
            if factors is not None:
                prediction.quantiles *= factors[:, None]
        if confidence is not None:
            bounds = self._quantiles(mixture, interval_levels(confidence), calibrator)
            prediction.interval_lower = widened(bounds[:, 0])
            prediction.interval_upper = widened(bounds[:, 1])
        if return_pdf:
            if calibrator is None:
                mass, bins = mixture, self.bins
            elif factors is None:
                mass, bins = calibrator.rebinned(mixture, self.bins)
            else:
                mass, bins = self._widened_mass(mixture, calibrator, factors)
            prediction.pdf, prediction.bins = mass / bins.widths, bins
        return prediction

    def _resolution(self, neighbors: _Neighbors, weights: np.ndarray) -> np.ndarray:
        """The lowest resolution among each query's weighted neighbours, ``(n,)``."""
        resolution = self.sample_resolution_[neighbors.safe]
        if not neighbors.complete:
            resolution = np.where(weights > 0, resolution, np.inf)
        return resolution.min(axis=1)

    def _widened_mass(
        self, mixture: np.ndarray, calibrator, factors: np.ndarray
    ) -> tuple[np.ndarray, Bins]:
        """The widened, calibrated distributions as mass on the calibrator's bins: bin ``j``
        gets its exact probability; what lies beyond the end edges is put in the end bins."""
        bins = calibrator.calibrated_bins(self.bins)
        cdf = np.stack(
            [calibrator.cdf(mixture, self.bins, edge / factors) for edge in bins.edges], axis=1
        )
        cdf[:, 0], cdf[:, -1] = 0.0, 1.0
        cdf = np.maximum.accumulate(np.clip(cdf, 0.0, 1.0), axis=1)  # rounding: no mass < 0
        return np.diff(cdf, axis=1), bins

    def _quantiles(self, mixture: np.ndarray, levels: np.ndarray, calibrator) -> np.ndarray:
        if calibrator is None:
            return mixture_quantiles(mixture, self.bins, levels)
        raw = mixture_quantiles(mixture, self.bins, np.atleast_1d(calibrator.raw_levels(levels)))
        return calibrator.quantiles_from_raw(raw)

    # ------------------------------------------------------------- calibration
    def calibrate(
        self,
        descriptors: np.ndarray,
        errors: np.ndarray,
        method: str = "isotonic",
        *,
        groups: np.ndarray | None = None,
        widen: bool = True,
        widening_floor: float = MIN_TOTAL_EXPONENT,
    ) -> LTAUEstimator:
        """Fit a recalibration map on held-out data (never the test set); returns ``self``.

        ``descriptors`` ``(n, dim)`` and observed ``errors`` ``(n,)`` (>= 0, the unit of the
        recorded errors) of a validation split, with optional ``groups`` ``(n,)`` as in
        :meth:`predict`. ``widen``: first fit a :class:`~ltau.calibration.DistanceWidening`
        (how errors grow with the OOD score and the group's OOD score; its total exponent at
        least ``widening_floor``, see :class:`~ltau.calibration.DistanceWidening`). ``method``:
        ``"scale"`` (one factor on the error axis) or ``"isotonic"`` (scale, then an isotonic
        map of CDF levels; Kuleshov et al. 2018), fitted on the widened distributions.
        Afterwards ``predict`` returns calibrated statistics unless ``calibrated=False``; the
        maps are saved with the estimator. With ``groups`` of at least three structures, the
        structure-level OOD scoring is chosen on them too (:attr:`structure_scoring_`, see
        :mod:`ltau.structure_scoring` and :meth:`per_structure`) and saved alike.
        """
        self._fitted_index("calibrate")
        calibrator = make_calibrator(method)
        boolean(widen, "widen")
        raw = self.predict(descriptors, groups=groups, return_pdf=True, calibrated=False)
        return self._fit_calibration(raw, errors, calibrator, groups, widen, widening_floor)

    def calibrate_from_neighbors(
        self,
        distances: np.ndarray,
        indices: np.ndarray,
        errors: np.ndarray,
        method: str = "isotonic",
        *,
        groups: np.ndarray | None = None,
        widen: bool = True,
        widening_floor: float = MIN_TOTAL_EXPONENT,
    ) -> LTAUEstimator:
        """:meth:`calibrate` given the validation queries' neighbours already found
        (``distances``, ``indices`` ``(n, k)`` as from :meth:`kneighbors`); returns ``self``."""
        self._fitted_index("calibrate_from_neighbors")
        calibrator = make_calibrator(method)
        boolean(widen, "widen")
        raw = self.predict_from_neighbors(
            distances, indices, groups=groups, return_pdf=True, calibrated=False
        )
        return self._fit_calibration(raw, errors, calibrator, groups, widen, widening_floor)

    def _fit_calibration(
        self,
        raw: LTAUPrediction,
        errors: np.ndarray,
        calibrator,
        groups: np.ndarray | None,
        widen: bool,
        widening_floor: float,
    ) -> LTAUEstimator:
        """Fit the widening (if ``widen``) and ``calibrator`` on the uncalibrated prediction
        ``raw`` (with its PDF) of validation queries whose observed errors are ``errors``."""
        mass = raw.pdf * self.bins.widths
        errors = _observed_errors(errors, mass.shape[0])
        observed = errors
        widening = None
        if widen:
            group_scores = _group_scores(groups, raw.ood_score)
            widening = DistanceWidening.fit(
                raw.ood_score,
                group_scores,
                raw.expected_error,
                errors,
                min_total_exponent=widening_floor,
            )
            errors = errors / widening.factors(raw.ood_score, group_scores)
        self.calibrator_ = calibrator.fit(mass, self.bins, errors)
        self.widening_ = widening
        self.structure_scoring_ = None
        if groups is not None and np.unique(groups).size >= _MIN_SCORING_GROUPS:
            self.structure_scoring_ = StructureScoring.fit(raw.ood_score, groups, observed)
        return self

    def per_structure(self, prediction: LTAUPrediction, groups: np.ndarray) -> GroupSummary:
        """``prediction.per_group(groups, scoring)`` with this estimator's structure scoring
        (:attr:`structure_scoring_`, fitted by :meth:`calibrate` given ``groups`` of at least
        three structures; else the plain maximum of the atoms' OOD scores, without flags)."""
        self._fitted_index("per_structure")
        if not isinstance(prediction, LTAUPrediction):
            raise LTAUInputError(
                f"prediction must be an LTAUPrediction; got {type(prediction).__name__}"
            )
        return prediction.per_group(groups, self.structure_scoring_ or StructureScoring())

    def probability_integral_transform(
        self,
        descriptors: np.ndarray,
        errors: np.ndarray,
        *,
        groups: np.ndarray | None = None,
        calibrated: bool = True,
    ) -> np.ndarray:
        """``CDF_i(error_i)`` of each query's predicted distribution, ``(n,)``; uniform on
        [0, 1] for calibrated predictions. ``groups`` as in :meth:`predict`."""
        self._fitted_index("probability_integral_transform")
        raw = self.predict(descriptors, groups=groups, return_pdf=True, calibrated=False)
        mass = raw.pdf * self.bins.widths
        calibrator = self.calibrator_ if calibrated else None
        if calibrator is None:
            return probability_integral_transform(mass, self.bins, errors)
        errors = _observed_errors(errors, mass.shape[0])
        if self.widening_ is not None:
            group_scores = _group_scores(groups, raw.ood_score)
            errors = errors / self.widening_.factors(raw.ood_score, group_scores)
        return calibrator.pit(mass, self.bins, errors)

    @staticmethod
    def _check_prediction_options(
        atol: float | Sequence[float] | None,
        quantiles: float | Sequence[float] | None,
        confidence: float | None,
        return_pdf: bool,
    ) -> tuple[np.ndarray, np.ndarray, float | None]:
        """Validated ``(atol values, quantile levels, confidence)``."""
        atol_values = np.empty(0) if atol is None else np.atleast_1d(tolerances(atol))
        levels = as_probabilities(quantiles, "quantiles") if quantiles is not None else np.empty(0)
        if confidence is not None:
            if np.ndim(confidence) != 0:
                raise LTAUInputError(f"confidence must be one number; got {confidence!r}")
            confidence = float(as_probabilities(confidence, "confidence")[0])
        boolean(return_pdf, "return_pdf")
        return atol_values, levels, confidence

    def _mixture(self, weights: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Weighted mean of the neighbours' masses, ``(n, n_bins)``, in bounded blocks."""
        n_queries, k = indices.shape
        block = max(1, _MIXTURE_FLOATS // (k * self.bins.n_bins))
        mixture = np.empty((n_queries, self.bins.n_bins))
        counts, totals = self.distributions_.counts, self.distributions_.n_observations
        for rows in row_chunks(n_queries, block):
            chosen = indices[rows]
            # Each neighbour's mass is its counts over its total: fold the total into its weight.
            mixture[rows] = np.einsum("qk,qkb->qb", weights[rows] / totals[chosen], counts[chosen])
        return mixture

    def _sample_exceedance(self, atol: float) -> np.ndarray:
        """Per-training-sample ``P(error > atol)``, computed once per tolerance."""
        if atol not in self._exceedance_cache_:
            self._exceedance_cache_[atol] = self.distributions_.exceedance(atol)
        return self._exceedance_cache_[atol]

    # -------------------------------------------------------------- persistence
    def use_gpu(self) -> LTAUEstimator:
        """Search neighbours on the GPU from now on (faiss-gpu and a GPU needed; see
        :meth:`ltau.search.NeighborIndex.use_gpu`); results are the same. Returns ``self``."""
        self._fitted_index("use_gpu").use_gpu()
        return self

    def save(
        self,
        path: str | os.PathLike,
        metadata: dict[str, Any] | None = None,
        *,
        index_file: bool | None = None,
    ) -> None:
        """Write everything needed to predict to one HDF5 file, atomically.

        ``metadata``: a JSON-serialisable dict of facts to keep with the estimator (units,
        model, data; default ``{}``). Once written it is also :attr:`metadata_`, as
        :meth:`load` will read it back. ``index_file``: keep the neighbour index in its own file
        ``<path>.faiss`` beside it (see :mod:`ltau.index_file`; it is written first, and the
        two must be kept together), instead of inside the HDF5 file; by default (None) for
        indices of :data:`~ltau.index_file.INDEX_FILE_MIN_ITEMS` items or more.
        """
        neighbor_index = self._fitted_index("save")
        if index_file is None:
            index_file = neighbor_index.n_items >= INDEX_FILE_MIN_ITEMS
        boolean(index_file, "index_file")
        metadata = {} if metadata is None else metadata
        if not isinstance(metadata, dict):
            raise LTAUInputError(f"metadata must be a dict; got {type(metadata).__name__}")
        try:
            metadata_json = json.dumps(metadata)
        except TypeError as exc:
            raise LTAUInputError(f"metadata must be JSON-serialisable: {exc}") from exc
        record = write_index_file(neighbor_index, index_file_path(path)) if index_file else None
        with atomic_h5(path, ESTIMATOR_FORMAT) as handle:
            handle.attrs["settings"] = json.dumps(self.get_params())
            handle.attrs["metadata"] = metadata_json
            handle.attrs["n_samples"] = self.distributions_.n_samples
            handle.attrs["descriptor_dim"] = neighbor_index.dim
            handle.attrs["index_kind"] = neighbor_index.kind
            handle.attrs["index_params"] = json.dumps(neighbor_index.params)
            calibration = self.calibrator_.to_dict() if self.calibrator_ is not None else None
            handle.attrs["calibration"] = json.dumps(calibration)
            widening = self.widening_.to_dict() if self.widening_ is not None else None
            handle.attrs["widening"] = json.dumps(widening)
            sign_attributes(handle, _ESTIMATOR_ATTRIBUTES)
            write_distributions_group(handle.create_group("distributions"), self.distributions_)
            group = handle.create_group("index")
            if record is None:
                write_array(group, "faiss", neighbor_index.serialize())
            else:
                group.attrs["file"] = record.to_json()
                sign_attributes(group, ("file",))
            if self.local_scale_ is not None:
                write_array(group, "local_scale", self.local_scale_)
            if self.structure_scoring_ is not None:
                scoring = handle.create_group("structure_scoring")
                scoring.attrs["scoring"] = json.dumps(self.structure_scoring_.to_dict())
                sign_attributes(scoring, ("scoring",))
        self.metadata_ = json.loads(metadata_json)

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, mmap: bool = True, full_check: bool = False
    ) -> LTAUEstimator:
        """Read an estimator written by :meth:`save`; predictions are identical.

        Every stored array and setting is checked against its SHA-256; a damaged file raises
        :class:`LTAUFileError` before anything is deserialised. A separate index file (see
        :meth:`save`) is checked quickly (size, token, sampled blocks; every byte with
        ``full_check``) and, with ``mmap``, its inverted lists are memory-mapped (IVF kinds;
        the file must then stay in place); :attr:`index_file_` names it (None if none).
        """
        with open_checked(path, ESTIMATOR_FORMAT) as handle, reading(path):
            names = (
                _ESTIMATOR_ATTRIBUTES_V1
                if int(handle.attrs["format_version"]) == 1
                else _ESTIMATOR_ATTRIBUTES
            )
            attributes = read_attributes(handle, names, path)
            if "distributions" not in handle:
                raise LTAUFileError(f"{path} is missing the group 'distributions'")
            distributions = read_distributions_group(handle["distributions"], path)
            if "index" not in handle:
                raise LTAUFileError(f"{path} is missing the group 'index'")
            serialized, record_json = None, None
            if "faiss" in handle["index"] or "file" not in handle["index"].attrs:
                serialized = read_array(handle["index"], "faiss", path)
            else:
                record_json = str(read_attributes(handle["index"], ("file",), path)["file"])
            local_scale = (
                read_array(handle["index"], "local_scale", path)
                if "local_scale" in handle["index"]
                else None
            )
            scoring_json = (
                str(read_attributes(handle["structure_scoring"], ("scoring",), path)["scoring"])
                if "structure_scoring" in handle
                else None
            )
        try:
            settings = json.loads(attributes["settings"])
            metadata = json.loads(attributes["metadata"])
            if not isinstance(metadata, dict):
                raise LTAUInputError("the stored metadata is not a JSON object")
            params = json.loads(attributes["index_params"])
            estimator = cls(**settings)
            estimator._validate_settings()
            record = None if record_json is None else IndexFileRecord.from_json(record_json)
            if record is None:
                neighbor_index = NeighborIndex.deserialize(
                    str(attributes["index_kind"]), params, serialized
                )
        except (TypeError, ValueError, LTAUInputError) as exc:
            raise LTAUFileError(f"{path}: stored estimator settings are invalid: {exc}") from exc
        index_path = None
        if record is not None:
            index_path = Path(path).with_name(record.name)
            neighbor_index = read_index_file(
                index_path,
                record,
                str(attributes["index_kind"]),
                params,
                mmap=mmap,
                full=full_check,
            )
        n_samples = int(attributes["n_samples"])
        if neighbor_index.n_items != n_samples or distributions.n_samples != n_samples:
            raise LTAUFileError(f"{path}: index, distributions and sample count disagree")
        if neighbor_index.dim != int(attributes["descriptor_dim"]):
            raise LTAUFileError(f"{path}: the index dimension disagrees with the stored one")
        if (local_scale is None) != (estimator.distance_scale == "absolute"):
            raise LTAUFileError(
                f"{path}: distance_scale={estimator.distance_scale!r} but the local scales are "
                f"{'missing' if local_scale is None else 'present'}"
            )
        if local_scale is not None and (
            local_scale.shape != (n_samples,)
            or not np.all(np.isfinite(local_scale))
            or np.any(local_scale <= 0)
        ):
            raise LTAUFileError(f"{path}: the stored local scales are invalid")
        estimator._set_fitted(neighbor_index, distributions, local_scale)
        estimator.metadata_ = metadata
        estimator.index_file_ = index_path
        try:
            calibration = json.loads(attributes["calibration"])
            if calibration is not None:
                estimator.calibrator_ = calibrator_from_dict(calibration)
            widening = json.loads(attributes.get("widening", "null"))
            if widening is not None:
                estimator.widening_ = DistanceWidening.from_dict(widening)
            if scoring_json is not None:
                estimator.structure_scoring_ = StructureScoring.from_dict(json.loads(scoring_json))
        except (TypeError, ValueError, LTAUInputError) as exc:
            raise LTAUFileError(f"{path}: the stored calibration is invalid: {exc}") from exc
        return estimator

    # ------------------------------------------------------- scikit-learn contract
    @classmethod
    def _param_names(cls) -> list[str]:
        """The constructor's parameter names, in signature order."""
        parameters = inspect.signature(cls.__init__).parameters.values()
        return [
            p.name
            for p in parameters
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Every constructor argument by name, as scikit-learn's ``BaseEstimator``.

        No parameter is itself an estimator, so ``deep`` changes nothing.
        """
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> LTAUEstimator:
        """Set constructor arguments by name (checked by :meth:`fit`); returns ``self``.

        Unknown names raise :class:`LTAUInputError`. The fitted state (index, distributions,
        calibration) depends on every parameter but ``batch_size``: changing any other one
        of a fitted estimator discards that state, so it must be fitted again.
        """
        names = self._param_names()
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise LTAUInputError(
                f"unknown parameters {unknown} for LTAUEstimator; it takes {names}"
            )
        changed = {name for name, value in params.items() if getattr(self, name) != value}
        for name, value in params.items():
            setattr(self, name, value)
        if changed - {"batch_size"}:
            for name in [name for name in vars(self) if name.endswith("_")]:
                delattr(self, name)
        elif "batch_size" in changed:
            positive_int(self.batch_size, "batch_size")
        return self

    def __repr__(self) -> str:
        settings = ", ".join(f"{name}={value!r}" for name, value in self.get_params().items())
        return f"LTAUEstimator({settings})"


def _observed_errors(errors: np.ndarray, n_queries: int) -> np.ndarray:
    """Validated observed errors, one per query (``(n_queries,)``, finite, >= 0)."""
    errors = checked_errors(errors, "errors")
    if errors.size != n_queries:
        raise LTAUInputError(
            f"errors has {errors.size} entries but there are {n_queries} descriptor rows"
        )
    return errors


def _ood_scores(distances: np.ndarray) -> np.ndarray:
    """Mean Euclidean distance to the neighbours found, ``(n,)`` from ``(n, k)``."""
    found = np.isfinite(distances)
    with np.errstate(invalid="ignore", divide="ignore"):  # no neighbour: refused by the caller
        return np.sum(np.where(found, distances, 0.0), axis=1) / found.sum(axis=1)


def _check_k(n_neighbors: int, n_samples: int) -> None:
    """Refuse more neighbours than training samples."""
    if n_neighbors > n_samples:
        raise LTAUInputError(f"n_neighbors={n_neighbors} exceeds the {n_samples} training samples")


def _training_distances(
    neighbor_index: NeighborIndex, descriptors: np.ndarray, searched: int, batch_size: int
) -> np.ndarray:
    """Distances ``(n_samples, searched)`` of each training sample to its ``searched`` nearest
    training samples (itself first), searched in batches."""
    return np.concatenate(
        [
            neighbor_index.search(descriptors[start : start + batch_size], searched)[0]
            for start in range(0, descriptors.shape[0], batch_size)
        ]
    )


def _local_scales(distances: np.ndarray) -> np.ndarray:
    """Local scale ``c_j = (s_j + m) / (2 m)`` of each training sample, ``(n_samples,)``:
    ``s_j`` its mean distance to its k nearest other training samples, ``m`` the median;
    ``distances`` ``(n_samples, k + 1)`` from a search of the training samples themselves."""
    if distances.shape[0] < 2:
        raise LTAUInputError("distance_scale='local' needs at least 2 training samples")
    # The nearest is the sample itself (or a copy of it at distance 0): leave one 0 out.
    spacing = _ood_scores(distances[:, 1:])
    spacing = np.where(np.isfinite(spacing), spacing, np.nanmedian(spacing))
    median = float(np.median(spacing))
    if not median > 0:
        raise LTAUInputError(
            "distance_scale='local' needs distinct training descriptors; most coincide"
        )
    return (spacing + median) / (2.0 * median)


def _group_ids(groups: np.ndarray | None, n: int) -> np.ndarray | None:
    """Validated integer group labels ``(n,)``, or None."""
    return None if groups is None else group_labels(groups, n, "query")


def _group_scores(groups: np.ndarray | None, ood_scores: np.ndarray) -> np.ndarray | None:
    """Each query's group OOD score (the mean over its group) for labels ``groups``, or None."""
    group_ids = _group_ids(groups, ood_scores.shape[0])
    return None if group_ids is None else _group_means(ood_scores, group_ids)


def _group_means(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each query's group mean of ``values``, ``(n,)``."""
    if labels.min() == labels.max():  # one group, as for the atoms of one structure
        return np.full(values.shape, values.mean())
    _, inverse = np.unique(labels, return_inverse=True)
    return (np.bincount(inverse, values) / np.bincount(inverse))[inverse]


def _structure_fields(
    ood_scores: np.ndarray, labels: np.ndarray, scoring: StructureScoring | None
) -> dict[str, Any]:
    """The structure-level fields of a :class:`GroupSummary` (empty without a ``scoring``)."""
    if scoring is None:
        return {}
    if not isinstance(scoring, StructureScoring):
        raise LTAUInputError(f"scoring must be a StructureScoring; got {type(scoring).__name__}")
    _, structure = scoring.scores(ood_scores, labels)
    return {
        "structure_ood_score": structure,
        "ood_flag": scoring.flags(structure),
        "structure_scoring": scoring.name,
    }
