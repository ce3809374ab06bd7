"""Figures and the HTML report of an evaluation (matplotlib, written atomically).

Input per test set: observed per-sample errors, the predicted expected error, the central
interval, PIT values of the observed errors under the predicted distributions, and the OOD
score. Output: ``report.html`` next to PNG figures and ``metrics.json``. Also the training-dynamics
figure (:func:`plot_training_dynamics`).
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ltau._io import atomic_path
from ltau.dynamics import DynamicsTable
from ltau.exceptions import LTAUInputError


@dataclass
class SetResults:
    """Per-sample arrays of one evaluated set; ``observed`` is None for unlabelled sets."""

    name: str
    expected_error: np.ndarray
    ood_score: np.ndarray
    observed: np.ndarray | None = None
    pit: np.ndarray | None = None


def write_report(
    output_dir: Path,
    title: str,
    summary: str,
    metrics: dict,
    sets: list[SetResults],
    error_unit: str = "eV/Å",
) -> Path:
    """Write ``metrics.json``, figures and ``report.html`` into ``output_dir``; return the page."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_dir / "metrics.json") as temporary:
        temporary.write_text(json.dumps(metrics, indent=2, default=float))
    labelled = [s for s in sets if s.observed is not None]
    figures = []
    if labelled:
        figures.append(_predicted_vs_true(output_dir, labelled, error_unit))
        figures.append(_binned_calibration(output_dir, labelled, error_unit))
        if all(s.pit is not None for s in labelled):
            figures.append(_pit_calibration(output_dir, labelled))
        figures.append(_distributions(output_dir, labelled, "error", error_unit))
    figures.append(_distributions(output_dir, sets, "ood", "descriptor distance"))
    page = output_dir / "report.html"
    table = _metrics_table(metrics)
    images = "\n".join(
        f'<figure><img src="{name}" alt="{html.escape(name)}"></figure>' for name in figures
    )
    with atomic_path(page) as temporary:
        temporary.write_text(
            f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:72em;margin:auto;padding:1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
th:first-child,td:first-child{{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>{table}{images}
<p>All numbers are in <code>metrics.json</code>.</p></body></html>"""
        )
    return page


def _metrics_table(metrics: dict) -> str:
    per_set = {k: v for k, v in metrics.get("sets", {}).items() if isinstance(v, dict)}
    if not per_set:
        return ""
    names = sorted({key for values in per_set.values() for key in values})
    header = "".join(f"<th>{html.escape(s)}</th>" for s in per_set)
    rows = []
    for name in names:
        cells = "".join(f"<td>{_format(values.get(name))}</td>" for values in per_set.values())
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    return f"<table><tr><th>metric</th>{header}</tr>{''.join(rows)}</table>"


def _format(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _save(figure: plt.Figure, path: Path) -> str:
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)
    return path.name


def _predicted_vs_true(output_dir: Path, sets: list[SetResults], unit: str) -> str:
    figure, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 4), squeeze=False)
    for axis, results in zip(axes[0], sets, strict=True):
        axis.loglog(results.expected_error, results.observed, ".", ms=2, alpha=0.4)
        low = max(
            min(results.expected_error.min(), results.observed[results.observed > 0].min()), 1e-6
        )
        high = max(results.expected_error.max(), results.observed.max())
        axis.plot([low, high], [low, high], "k--", lw=1)
        axis.set_title(results.name)
        axis.set_xlabel(f"predicted expected error ({unit})")
        axis.set_ylabel(f"true error ({unit})")
    return _save(figure, output_dir / "predicted_vs_true.png")


def _binned_calibration(output_dir: Path, sets: list[SetResults], unit: str) -> str:
    figure, axis = plt.subplots(figsize=(5, 4.5))
    for results in sets:
        order = np.argsort(results.expected_error)
        chunks = np.array_split(order, min(15, max(1, order.size // 20)))
        predicted = [results.expected_error[c].mean() for c in chunks]
        observed = [results.observed[c].mean() for c in chunks]
        axis.plot(predicted, observed, "o-", label=results.name)
    limits = axis.get_xlim()
    axis.plot(limits, limits, "k--", lw=1)
    axis.set_xlabel(f"mean predicted expected error ({unit})")
    axis.set_ylabel(f"mean true error ({unit})")
    axis.set_title("binned calibration (equal-count bins)")
    axis.legend()
    return _save(figure, output_dir / "binned_calibration.png")


def _pit_calibration(output_dir: Path, sets: list[SetResults]) -> str:
    figure, axis = plt.subplots(figsize=(5, 4.5))
    levels = np.linspace(0, 1, 101)
    for results in sets:
        observed = np.searchsorted(np.sort(results.pit), levels, side="right") / results.pit.size
        axis.plot(levels, observed, label=results.name)
    axis.plot([0, 1], [0, 1], "k--", lw=1)
    axis.set_xlabel("predicted quantile level")
    axis.set_ylabel("observed fraction of errors below it")
    axis.set_title("quantile calibration")
    axis.legend()
    return _save(figure, output_dir / "quantile_calibration.png")


def _distributions(output_dir: Path, sets: list[SetResults], kind: str, unit: str) -> str:
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for results in sets:
        values = results.observed if kind == "error" else results.ood_score
        axis.hist(values, bins=40, density=True, histtype="step", label=results.name)
    axis.set_xlabel(f"true error ({unit})" if kind == "error" else f"OOD score ({unit})")
    axis.set_ylabel("density")
    axis.set_title("true errors per set" if kind == "error" else "OOD score per set")
    axis.legend()
    return _save(figure, output_dir / f"{kind}_distributions.png")


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
    figure, axis = plt.subplots(figsize=(5.5, 4.5))
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
    _save(figure, target)
    return target
