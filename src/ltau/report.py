"""Figures and the self-contained HTML report of an evaluation.

Input per evaluated set (:class:`SetResults`): per-sample arrays of the predicted expected
error, the OOD score and, for labelled sets, the observed error, the central interval, the PIT
values of the observed errors under the predicted distributions and (for atoms) each sample's
element. Output: one ``report.html`` whose figures are embedded as base64 PNG data URIs (the
file copied alone shows everything), with ``metrics.json`` beside it. Also the
training-dynamics figure (:func:`plot_training_dynamics`).

matplotlib is imported only when a figure is drawn, so importing this module does not need it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ltau import metrics
from ltau._io import atomic_path
from ltau.dynamics import DynamicsTable
from ltau.exceptions import LTAUInputError
from ltau.metrics import MetricInfo

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ERROR_UNIT = "{error_unit}"
"""Stands for the unit of the errors (``write_report``'s ``error_unit``) in a metric's unit."""


_LOWER, _HIGHER = "lower is better", "higher is better"


def _with_error_unit(info: MetricInfo) -> MetricInfo:
    return info._replace(unit=info.unit.replace("error unit", ERROR_UNIT))


_BUNDLE = {key: _with_error_unit(info) for key, info in metrics.METRIC_INFO.items()}

METRIC_INFO: dict[str, MetricInfo] = {
    **_BUNDLE,
    # What the force-field pipeline (ltau.atomistic.pipeline) reports around the bundle.
    "n_atoms": MetricInfo("atoms", "", ""),
    "force_rmse": MetricInfo("force RMSE", ERROR_UNIT, _LOWER),
    "force_mae": MetricInfo("mean true error (force MAE)", ERROR_UNIT, _LOWER),
    "mean_expected_error": MetricInfo("mean predicted expected error", ERROR_UNIT, ""),
    "n_below_resolution": MetricInfo(
        "expected errors below the neighbours' resolution (flagged)", "", _LOWER
    ),
    "miscalibration_area_uncalibrated": MetricInfo(
        "miscalibration area before calibration", "", _LOWER
    ),
    "mean_ood_score": MetricInfo("mean OOD score", "descriptor distance", ""),
    "auroc_ood_score_vs_in_domain": MetricInfo(
        "AUROC of the OOD score against the in-domain set", "", _HIGHER
    ),
    "n_structures": MetricInfo("structures", "", ""),
    "mean_structure_ood_score": MetricInfo("mean structure OOD score", "", ""),
    "fraction_structures_flagged_ood": MetricInfo(
        "fraction of structures flagged out of domain (validated threshold)", "", ""
    ),
    "auroc_structure_ood_score_vs_in_domain": MetricInfo(
        "AUROC of the structure OOD score against the in-domain structures", "", _HIGHER
    ),
    "structure_spearman": MetricInfo(
        "Spearman ρ, structure's largest expected vs largest true error", "", _HIGHER
    ),
    # The tabular demo (ltau.demo.tabular): its accuracy, and its older names of bundle keys.
    "rmse": MetricInfo("RMSE", ERROR_UNIT, _LOWER),
    "mean_abs_error": MetricInfo("mean true error (MAE)", ERROR_UNIT, _LOWER),
    "spearman_expected_vs_true_error": _BUNDLE["spearman"],
    "auroc_exceedance_flags_error_above_atol": _BUNDLE["auroc_error_flag"],
    "coverage_0.9_interval": _BUNDLE["coverage90"],
}
"""Label, unit and direction of every metric key the report knows, keyed as in metrics.json:
those of :data:`ltau.metrics.METRIC_INFO` and what the pipelines add around them."""

TABLE_ORDER: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "size and accuracy",
        ("n_atoms", "n", "force_rmse", "rmse", "force_mae", "mean_abs_error"),
    ),
    ("predicted error", ("mean_expected_error", "n_below_resolution", "fraction_above_atol")),
    (
        "ranking",
        (
            "spearman",
            "spearman_expected_vs_true_error",
            "ause",
            "auroc_error_flag",
            "auroc_exceedance_flags_error_above_atol",
        ),
    ),
    (
        "calibration",
        (
            "coverage90",
            "coverage_0.9_interval",
            "miscalibration_area",
            "miscalibration_area_uncalibrated",
            "ence",
        ),
    ),
    ("proper scores", ("crps", "nll")),
    ("out of domain", ("mean_ood_score", "auroc_ood_score_vs_in_domain")),
    (
        "per structure",
        (
            "n_structures",
            "structure_spearman",
            "mean_structure_ood_score",
            "fraction_structures_flagged_ood",
            "auroc_structure_ood_score_vs_in_domain",
        ),
    ),
)
"""Sections and row order of the metric table; keys a set does not have are skipped, keys not
listed here follow at the end under "other"."""

ELEMENT_COLUMNS = (
    "n_atoms",
    "force_rmse",
    "spearman",
    "coverage90",
    "mean_expected_error",
    "force_mae",
)
"""Columns of the per-element table, the keys of :func:`element_breakdown`."""

FIGURE_DPI = 100


@dataclass
class SetResults:
    """Per-sample arrays of one evaluated set, each ``(n,)``; ``observed`` is None for
    unlabelled sets.

    ``expected_error``, ``observed``, ``interval_lower`` / ``interval_upper`` (the central
    interval) are errors in the report's error unit; ``ood_score`` in descriptor units; ``pit``
    in [0, 1]; ``elements`` the chemical symbol of each sample (atoms only).
    """

    name: str
    expected_error: np.ndarray
    ood_score: np.ndarray
    observed: np.ndarray | None = None
    pit: np.ndarray | None = None
    interval_lower: np.ndarray | None = None
    interval_upper: np.ndarray | None = None
    elements: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise LTAUInputError(f"a set needs a non-empty name; got {self.name!r}")
        n = np.size(self.expected_error)
        if n == 0:
            raise LTAUInputError(f"set {self.name!r} is empty")
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "name" or value is None:
                continue
            array = np.asarray(value) if field.name == "elements" else _numbers(value)
            if array.shape != (n,):
                raise LTAUInputError(
                    f"set {self.name!r}: {field.name} must have shape ({n},) like "
                    f"expected_error; got {array.shape}"
                )
            if field.name != "elements" and not np.all(np.isfinite(array)):
                raise LTAUInputError(f"set {self.name!r}: {field.name} contains NaN or infinity")
            setattr(self, field.name, array)
        if (self.interval_lower is None) != (self.interval_upper is None):
            raise LTAUInputError(f"set {self.name!r}: give both interval bounds or neither")
        if self.pit is not None and np.any((self.pit < 0) | (self.pit > 1)):
            raise LTAUInputError(f"set {self.name!r}: pit values must lie in [0, 1]")
        if self.observed is None and self.pit is not None:
            raise LTAUInputError(f"set {self.name!r}: pit values need observed errors")

    @property
    def labelled(self) -> bool:
        """Whether the set has observed errors."""
        return self.observed is not None


def _numbers(value: object) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LTAUInputError(f"per-sample values must be numbers: {exc}") from exc


def element_breakdown(results: SetResults) -> dict[str, dict]:
    """Metrics per element of a labelled set with ``elements``, keyed by symbol
    (alphabetical): ``n_atoms``, ``force_rmse`` and ``force_mae`` (RMSE and mean of the
    observed errors), ``spearman`` (predicted expected vs observed error; None with fewer than
    two atoms or constant values), ``coverage90`` (fraction inside the set's interval; None
    without one), ``mean_expected_error``. Errors in the set's unit."""
    if results.observed is None or results.elements is None:
        raise LTAUInputError(
            f"set {results.name!r}: a per-element breakdown needs observed errors and elements"
        )
    breakdown = {}
    for element in sorted(set(results.elements.tolist())):
        rows = results.elements == element
        predicted, observed = results.expected_error[rows], results.observed[rows]
        coverage = None
        if results.interval_lower is not None:
            coverage = metrics.interval_coverage(
                observed, results.interval_lower[rows], results.interval_upper[rows]
            )
        breakdown[str(element)] = {
            "n_atoms": int(rows.sum()),
            "force_rmse": metrics.rmse(observed),
            "spearman": _spearman(predicted, observed),
            "coverage90": coverage,
            "mean_expected_error": float(predicted.mean()),
            "force_mae": float(observed.mean()),
        }
    return breakdown


def _spearman(predicted: np.ndarray, observed: np.ndarray) -> float | None:
    """Spearman ρ, or None when it is undefined (fewer than two values, or constant ones)."""
    if predicted.size < 2 or np.ptp(predicted) == 0 or np.ptp(observed) == 0:
        return None
    return metrics.spearman(predicted, observed)


def _coverage(results: SetResults) -> float | None:
    """Fraction of observed errors inside the set's interval, or None without one."""
    if results.observed is None or results.interval_lower is None:
        return None
    return metrics.interval_coverage(
        results.observed, results.interval_lower, results.interval_upper
    )


def findings(
    sets: list[SetResults],
    *,
    in_domain: str | None = None,
    error_unit: str = "eV/Å",
    confidence: float = 0.9,
    samples: str = "samples",
) -> list[str]:
    """A plain reading of the numbers behind the figures, one paragraph per topic: per
    labelled set, interval coverage against ``confidence``, mean predicted against mean true
    error, Spearman ρ and the first step of sparsification; then each other set against the
    ``in_domain`` set (error levels, coverage, Spearman ρ, OOD-score AUROC). ``samples`` names
    what the sets hold (e.g. "atoms").

    A coverage counts as close to nominal within two binomial standard errors
    ``2 sqrt(c (1 - c) / n)``, and at least 0.02.
    """
    paragraphs = []
    for results in sets:
        if not results.labelled:
            continue
        observed, predicted = results.observed, results.expected_error
        sentences = [
            f"In {results.name} ({observed.size} {samples}), the mean predicted expected error is "
            f"{predicted.mean():.3g} {error_unit} against a mean true error of "
            f"{observed.mean():.3g} {error_unit}."
        ]
        coverage = _coverage(results)
        if coverage is not None:
            tolerance = max(0.02, 2 * np.sqrt(confidence * (1 - confidence) / observed.size))
            if abs(coverage - confidence) <= tolerance:
                verdict = "close to nominal"
            elif coverage < confidence:
                verdict = "below nominal: the intervals are too narrow"
            else:
                verdict = "above nominal: the intervals are wider than needed"
            sentences.append(
                f"{coverage:.1%} of the true errors lie inside the {confidence:.0%} interval "
                f"({verdict})."
            )
        rho = _spearman(predicted, observed)
        if rho is not None:
            sentences.append(
                f"The predicted error ranks the true errors with Spearman ρ = {rho:.2f}."
            )
        if observed.mean() > 0 and observed.size >= 10:
            curve = metrics.sparsification_curve(predicted, observed, n_steps=10)
            sentences.append(
                f"Setting aside the 10% of {samples} with the highest predicted error brings the "
                f"mean true error of the rest to {curve['model'][1]:.0%} of the whole set's "
                f"mean; setting aside the 10% largest true errors (the oracle) brings it to "
                f"{curve['oracle'][1]:.0%}."
            )
        paragraphs.append(" ".join(sentences))
    reference = next((s for s in sets if s.name == in_domain), None)
    if reference is None:
        return paragraphs
    for results in sets:
        if results is reference:
            continue
        sentences = []
        if results.labelled and reference.labelled:
            sentences.append(
                f"Against {reference.name}, the mean true error in {results.name} is "
                f"{_ratio(results.observed.mean(), reference.observed.mean())} as large, and "
                "the mean predicted expected error "
                f"{_ratio(results.expected_error.mean(), reference.expected_error.mean())}."
            )
            coverages = _coverage(reference), _coverage(results)
            if None not in coverages:
                sentences.append(
                    f"Coverage of the {confidence:.0%} interval goes from {coverages[0]:.1%} to "
                    f"{coverages[1]:.1%}."
                )
            rhos = (
                _spearman(reference.expected_error, reference.observed),
                _spearman(results.expected_error, results.observed),
            )
            if None not in rhos:
                sentences.append(f"Spearman ρ goes from {rhos[0]:.2f} to {rhos[1]:.2f}.")
        scores = np.concatenate([results.ood_score, reference.ood_score])
        labels = np.r_[np.ones(results.ood_score.size), np.zeros(reference.ood_score.size)]
        sentences.append(
            f"The OOD score separates {results.name} from {reference.name} with AUROC "
            f"{metrics.auroc(scores, labels):.2f} (0.5 is no separation, 1 a complete one); "
            f"its median is {_ratio(np.median(results.ood_score), np.median(reference.ood_score))}"
            f" the in-domain median."
        )
        paragraphs.append(" ".join(sentences))
    return paragraphs


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f} times" if reference > 0 else "(undefined: zero reference)"


def write_report(
    output_dir: str | os.PathLike,
    title: str,
    summary: str,
    report: dict,
    sets: list[SetResults],
    *,
    per_set: dict[str, dict] | None = None,
    in_domain: str | None = None,
    error_unit: str = "eV/Å",
    confidence: float = 0.9,
    samples: str = "samples",
) -> Path:
    """Write ``metrics.json`` (``report`` as is) and the self-contained ``report.html`` into
    ``output_dir``; return the page.

    The metric table has one column per entry of ``per_set`` (default ``report["sets"]``:
    ``{set name: {metric key: value}}``), rows labelled by :data:`METRIC_INFO` in the order of
    :data:`TABLE_ORDER`; a ``per_element`` entry of a set (:func:`element_breakdown`) becomes
    the per-element table. Figures and the reading (:func:`findings`) come from ``sets``;
    ``in_domain`` names the set the others are compared with; ``samples`` what the sets hold.
    """
    if not sets or not all(isinstance(s, SetResults) for s in sets):
        raise LTAUInputError("the report needs at least one SetResults")
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise LTAUInputError(f"set names must be unique; got {names}")
    if in_domain is not None and in_domain not in names:
        raise LTAUInputError(f"in-domain set {in_domain!r} is not among the sets {names}")
    per_set = report.get("sets", {}) if per_set is None else per_set
    if not isinstance(per_set, dict) or not all(isinstance(v, dict) for v in per_set.values()):
        raise LTAUInputError("per-set metrics must map set names to dictionaries")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_dir / "metrics.json") as temporary:
        temporary.write_text(json.dumps(report, indent=2, default=float))
    figures = _figures(sets, error_unit, samples)
    reading = findings(
        sets, in_domain=in_domain, error_unit=error_unit, confidence=confidence, samples=samples
    )
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="summary">{html.escape(summary)}</p>',
        "<h2>Reading</h2>",
        *(f"<p>{html.escape(paragraph)}</p>" for paragraph in reading),
        "" if reading else "<p>No set has observed errors or an in-domain set to compare with.</p>",
        "<h2>Metrics</h2>",
        _metric_table(per_set, error_unit),
        _element_table(per_set, error_unit),
        "<h2>Figures</h2>",
        '<div class="figures">',
        *(
            f'<figure><img src="{uri}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            for caption, uri in figures
        ),
        "</div>",
        "<p>All numbers are in <code>metrics.json</code> beside this file.</p>",
    ]
    page = output_dir / "report.html"
    with atomic_path(page) as temporary:
        temporary.write_text(
            f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body>{''.join(body)}</body></html>",
            encoding="utf-8",
        )
    return page


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:76em;margin:auto;padding:1em 1.5em;color:#222;
line-height:1.45}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
.summary{color:#444}table{border-collapse:collapse;margin:.5em 0 1em}
td,th{border:1px solid #ccc;padding:3px 9px;text-align:right;vertical-align:top}
th{background:#f3f3f3}td.label,th.label{text-align:left}td.note{text-align:left;color:#666}
tr.section th{text-align:left;background:#e8eef6}
.figures{display:flex;flex-wrap:wrap;gap:1.5em 2em;align-items:flex-start}
figure{margin:0;display:table}img{max-width:100%;height:auto}
figcaption{display:table-caption;caption-side:bottom;font-size:.9em;color:#444}
"""


def _format(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return html.escape(str(value))


def _info(key: str, error_unit: str) -> MetricInfo:
    info = METRIC_INFO.get(key, MetricInfo(key, "", ""))
    return info._replace(unit=info.unit.format(error_unit=error_unit))


def _metric_table(per_set: dict[str, dict], error_unit: str) -> str:
    scalar = {
        key
        for values in per_set.values()
        for key, value in values.items()
        if not isinstance(value, dict | list)
    }
    if not scalar:
        return "<p>No per-set metrics.</p>"
    listed = [key for _, keys in TABLE_ORDER for key in keys]
    sections = [(heading, [k for k in keys if k in scalar]) for heading, keys in TABLE_ORDER]
    sections.append(("other", sorted(scalar - set(listed))))
    header = "".join(f"<th>{html.escape(name)}</th>" for name in per_set)
    rows = [
        '<tr><th class="label">metric</th><th class="label">unit</th>'
        f'<th class="label">better</th>{header}</tr>'
    ]
    for heading, keys in sections:
        if not keys:
            continue
        rows.append(
            f'<tr class="section"><th colspan="{3 + len(per_set)}">{html.escape(heading)}</th></tr>'
        )
        for key in keys:
            info = _info(key, error_unit)
            cells = "".join(f"<td>{_format(values.get(key))}</td>" for values in per_set.values())
            rows.append(
                f'<tr><td class="label" title="{html.escape(key)}">{html.escape(info.label)}</td>'
                f'<td class="note">{html.escape(info.unit)}</td>'
                f'<td class="note">{html.escape(info.direction)}</td>{cells}</tr>'
            )
    return f'<table class="metrics">{"".join(rows)}</table>'


def _element_table(per_set: dict[str, dict], error_unit: str) -> str:
    broken_down = {name: v["per_element"] for name, v in per_set.items() if "per_element" in v}
    if not broken_down:
        return ""
    header = "".join(
        f"<th>{html.escape(info.label)}"
        + (f"<br>({html.escape(info.unit)})" if info.unit else "")
        + "</th>"
        for info in (_info(key, error_unit) for key in ELEMENT_COLUMNS)
    )
    rows = [f'<tr><th class="label">set</th><th class="label">element</th>{header}</tr>']
    for name, elements in broken_down.items():
        first = f'<td class="label" rowspan="{len(elements)}">{html.escape(name)}</td>'
        for element, values in elements.items():
            cells = "".join(f"<td>{_format(values.get(key))}</td>" for key in ELEMENT_COLUMNS)
            rows.append(f'<tr>{first}<td class="label">{html.escape(element)}</td>{cells}</tr>')
            first = ""
    return (
        "<h2>Per element</h2><p>The same metrics over the atoms of each element; the "
        "coverage is that of the 90% interval.</p>"
        f'<table class="elements">{"".join(rows)}</table>'
    )


# ----------------------------------------------------------------------------------------------
# Figures (matplotlib's object-oriented API: no pyplot, no global backend)
# ----------------------------------------------------------------------------------------------


def _new_figure(
    n_panels: int = 1, *, panel_size: tuple[float, float] = (4.2, 4.0), share: bool = False
) -> tuple[Figure, list[Axes]]:
    """A figure of ``n_panels`` panels in rows of up to 3 (axes shared when ``share``)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(f"figures need matplotlib (the 'demo' extra): {exc}") from exc
    n_columns = min(n_panels, 3)
    n_rows = -(-n_panels // n_columns)
    figure = Figure(
        figsize=(panel_size[0] * n_columns, panel_size[1] * n_rows), layout="constrained"
    )
    axes = figure.subplots(n_rows, n_columns, squeeze=False, sharex=share, sharey=share).ravel()
    for unused in axes[n_panels:]:
        unused.set_visible(False)
    return figure, list(axes[:n_panels])


def _data_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figures(sets: list[SetResults], unit: str, samples: str) -> list[tuple[str, str]]:
    """``(caption, data URI)`` of every figure the sets allow; ``samples`` names the samples."""
    labelled = [s for s in sets if s.labelled]
    figures = []
    if labelled:
        figures.append(_predicted_vs_true(labelled, unit, samples))
        figures.append(_sparsification(labelled, samples))
        figures.append(_binned_calibration(labelled, unit, samples))
        with_pit = [s for s in labelled if s.pit is not None]
        if with_pit:
            figures.append(_quantile_calibration(with_pit))
        figures.append(_error_distributions(labelled, unit, samples))
    figures.append(_ood_distributions(sets, samples))
    return figures


def _log_limits(*arrays: np.ndarray) -> tuple[float, float]:
    """Common log-axis limits of the positive values of ``arrays``, padded by 20%."""
    values = np.concatenate([np.ravel(a) for a in arrays])
    positive = values[values > 0]
    if positive.size == 0:
        return 1e-3, 1.0
    low, high = positive.min() / 1.2, positive.max() * 1.2
    return (low, high) if high > low else (low / 10, low * 10)


def _log_axes(axis: Axes, low: float, high: float, *, y: bool = True) -> None:
    """Log scale from ``low`` to ``high`` on x (and y): decade labels over more than two
    decades, else labels at 1, 2 and 5 times powers of ten, written as plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for which in ("x", "y") if y else ("x",):
        scale = getattr(axis, f"set_{which}scale")
        scale("log")
        getattr(axis, f"set_{which}lim")(low, high)
        ticks = getattr(axis, f"{which}axis")
        ticks.set_minor_formatter(NullFormatter())
        if high / low <= 100:
            ticks.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ticks.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def _predicted_vs_true(sets: list[SetResults], unit: str, samples: str) -> tuple[str, str]:
    low, high = _log_limits(*(s.expected_error for s in sets), *(s.observed for s in sets))
    figure, axes = _new_figure(len(sets), share=True)
    for axis, results in zip(axes, sets, strict=True):
        axis.scatter(
            np.maximum(results.expected_error, low),
            np.maximum(results.observed, low),
            s=3,
            alpha=0.35,
            linewidths=0,
            rasterized=True,
        )
        axis.plot([low, high], [low, high], "k--", lw=1, label="predicted = true")
        _log_axes(axis, low, high)
        axis.set_aspect("equal")
        axis.set_title(f"{results.name} ({results.observed.size} {samples})")
        axis.set_xlabel(f"predicted expected error ({unit})")
    axes[0].set_ylabel(f"true error ({unit})")
    axes[0].legend(loc="upper left")
    caption = (
        f"True against predicted expected error ({samples}, one point each); all panels share "
        "their axes, and the dashed line is predicted = true. A calibrated expected error has "
        "the points' mean on the line at every predicted value, with their spread around it."
    )
    return caption, _data_uri(figure)


def _sparsification(sets: list[SetResults], samples: str) -> tuple[str, str]:
    curves = {s.name: metrics.sparsification_curve(s.expected_error, s.observed) for s in sets}
    top = max(1.0, *(c["model"].max() for c in curves.values())) * 1.05
    figure, axes = _new_figure(len(sets), share=True)
    for axis, results in zip(axes, sets, strict=True):
        curve = curves[results.name]
        area = metrics.ause(results.expected_error, results.observed)
        removed = curve["fraction_removed"]
        axis.plot(removed, curve["model"], label=f"by predicted error (AUSE {area:.3f})")
        axis.plot(removed, curve["oracle"], "k--", lw=1, label="by true error (oracle)")
        axis.plot([0, 1], [1, 1], ":", color="grey", label="random order (expected)")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, top)
        axis.set_title(results.name)
        axis.set_xlabel(f"fraction of {samples} removed")
        axis.legend(fontsize="small")
    axes[0].set_ylabel("mean true error of the rest / mean of all")
    caption = (
        f"Sparsification: the mean true error of the {samples} that remain after removing the "
        "given fraction with the highest predicted expected error (solid), with the highest "
        "true error (oracle, dashed, the best any ranking can do) and in random order (dotted). "
        "AUSE is the area between the solid and dashed curves."
    )
    return caption, _data_uri(figure)


def _binned_calibration(sets: list[SetResults], unit: str, samples: str) -> tuple[str, str]:
    tables = [
        metrics.binned_error_calibration(
            s.expected_error, s.observed, n_bins=min(15, max(1, s.observed.size // 20))
        )
        for s in sets
    ]
    low, high = _log_limits(
        *(t["mean_predicted"] for t in tables), *(t["mean_observed"] for t in tables)
    )
    figure, (axis,) = _new_figure(panel_size=(4.8, 4.4))
    for results, table in zip(sets, tables, strict=True):
        axis.plot(table["mean_predicted"], table["mean_observed"], "o-", ms=4, label=results.name)
    axis.plot([low, high], [low, high], "k--", lw=1, label="calibrated")
    _log_axes(axis, low, high)
    axis.set_aspect("equal")
    axis.set_xlabel(f"mean predicted expected error ({unit})")
    axis.set_ylabel(f"mean true error ({unit})")
    axis.legend(fontsize="small")
    caption = (
        f"Binned calibration of the expected error: {samples} sorted by predicted expected error "
        "into up to 15 bins of equal count, mean true against mean predicted error per bin."
    )
    return caption, _data_uri(figure)


def _quantile_calibration(sets: list[SetResults]) -> tuple[str, str]:
    levels = np.linspace(0, 1, 101)
    figure, (axis,) = _new_figure(panel_size=(4.8, 4.4))
    for results in sets:
        curve = metrics.calibration_curve(results.pit, levels)
        axis.plot(curve["expected"], curve["observed"], label=results.name)
    axis.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_aspect("equal")
    axis.set_xlabel("predicted quantile level")
    axis.set_ylabel("fraction of true errors below it")
    axis.legend(fontsize="small")
    caption = (
        "Quantile calibration of the predicted distributions: for each level p, the fraction "
        "of true errors below the predicted p-quantile. Calibrated distributions follow the "
        "diagonal; the miscalibration area is the area between them."
    )
    return caption, _data_uri(figure)


def _error_distributions(sets: list[SetResults], unit: str, samples: str) -> tuple[str, str]:
    low, high = _log_limits(*(s.observed for s in sets))
    edges = np.geomspace(low, high, 41)
    figure, (axis,) = _new_figure(panel_size=(5.2, 4.0))
    for results in sets:
        values = np.clip(results.observed, low, high)
        axis.hist(
            values,
            bins=edges,
            weights=np.full(values.size, 1 / values.size),
            histtype="step",
            label=results.name,
        )
    _log_axes(axis, low, high, y=False)
    axis.set_xlabel(f"true error ({unit})")
    axis.set_ylabel(f"fraction of {samples} per bin")
    axis.legend(fontsize="small")
    caption = "True errors of each labelled set, on common log-spaced bins."
    return caption, _data_uri(figure)


def _ood_distributions(sets: list[SetResults], samples: str) -> tuple[str, str]:
    values = np.concatenate([s.ood_score for s in sets])
    low, high = float(values.min()), float(values.max())
    edges = np.linspace(low, high if high > low else low + 1.0, 41)
    figure, (axis,) = _new_figure(panel_size=(5.2, 4.0))
    for results in sets:
        axis.hist(
            results.ood_score,
            bins=edges,
            weights=np.full(results.ood_score.size, 1 / results.ood_score.size),
            histtype="step",
            label=results.name,
        )
    axis.set_xlabel(f"OOD score (mean distance to the k nearest training {samples})")
    axis.set_ylabel(f"fraction of {samples} per bin")
    axis.legend(fontsize="small")
    caption = (
        "OOD score of every set, on common bins: the mean descriptor distance to the k nearest "
        f"training {samples} (each relative to the neighbour's local scale with local "
        "distances); larger means farther from the training data."
    )
    return caption, _data_uri(figure)


def plot_training_dynamics(
    table: DynamicsTable,
    path: str | os.PathLike,
    *,
    atol: float,
    color_by: str = "forgetting_events",
    unit: str = "eV/Å",
    title: str = "training dynamics",
) -> Path:
    """Scatter of mean error against variability (std over epochs), coloured by ``color_by``
    (a column of ``table``, e.g. ``forgetting_events`` or ``exceed_fraction``); one PNG."""
    columns = table.columns()
    if color_by not in columns:
        raise LTAUInputError(f"color_by must be one of {list(columns)}; got {color_by!r}")
    seen = table.n_epochs > 0
    figure, (axis,) = _new_figure(panel_size=(5.5, 4.5))
    points = axis.scatter(
        table.mean_error[seen],
        table.error_std[seen],
        c=columns[color_by][seen],
        s=6,
        alpha=0.7,
        cmap="viridis",
    )
    figure.colorbar(points, ax=axis, label=color_by.replace("_", " "))
    axis.axvline(atol, color="k", ls="--", lw=1, label=f"atol = {atol:.3g} {unit}")
    axis.set_xscale("log")
    axis.set_xlabel(f"mean error over epochs ({unit})")
    axis.set_ylabel(f"error std over epochs ({unit})")
    axis.set_title(title)
    axis.legend(loc="upper left")
    target = Path(path)
    with atomic_path(target) as temporary:
        figure.savefig(temporary, dpi=FIGURE_DPI, format="png")
    return target
