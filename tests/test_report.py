"""The self-contained HTML report: embedded figures, the labelled metric table in its fixed
order, the per-element breakdown, the reading, and clear errors on bad input."""

from __future__ import annotations

import base64
import html
import json
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from ltau import metrics
from ltau.exceptions import LTAUInputError
from ltau.report import METRIC_INFO, SetResults, element_breakdown, findings, write_report


def tiny_set() -> SetResults:
    """Five atoms, two elements, numbers small enough to check by hand."""
    return SetResults(
        "tiny",
        expected_error=np.array([0.2, 0.4, 1.5, 1.0, 2.5]),
        ood_score=np.array([1.0, 1.1, 1.2, 1.3, 1.4]),
        observed=np.array([0.1, 0.3, 1.0, 2.0, 3.0]),
        pit=np.array([0.3, 0.7, 0.4, 0.8, 0.95]),
        interval_lower=np.array([0.0, 0.0, 0.5, 0.5, 0.5]),
        interval_upper=np.array([0.2, 0.2, 2.5, 2.5, 2.5]),
        elements=np.array(["H", "H", "O", "O", "O"]),
    )


def synthetic_set(name: str, n: int, scale: float, seed: int, width: float = 1.0) -> SetResults:
    """Errors drawn as |N(0, s)| with s known to the 'model': a calibrated set when
    ``width == 1``, over-confident intervals when ``width < 1``."""
    rng = np.random.default_rng(seed)
    sigma = scale * rng.uniform(0.5, 2.0, n)
    observed = np.abs(rng.normal(size=n)) * sigma
    # Half-normal: mean sigma sqrt(2/pi); 5% and 95% quantiles 0.0627 and 1.96 sigma.
    return SetResults(
        name,
        expected_error=sigma * np.sqrt(2 / np.pi),
        ood_score=rng.normal(scale, 0.1, n),
        observed=observed,
        interval_lower=0.0627 * sigma * width,
        interval_upper=1.96 * sigma * width,
        elements=rng.choice(["Cu", "H"], n),
    )


def test_element_breakdown_by_hand():
    breakdown = element_breakdown(tiny_set())
    assert list(breakdown) == ["H", "O"]
    hydrogen, oxygen = breakdown["H"], breakdown["O"]
    assert hydrogen["n_atoms"] == 2 and oxygen["n_atoms"] == 3
    assert hydrogen["force_rmse"] == pytest.approx(np.sqrt(0.05))
    assert oxygen["force_rmse"] == pytest.approx(np.sqrt(14 / 3))
    assert hydrogen["spearman"] == pytest.approx(1.0)
    assert oxygen["spearman"] == pytest.approx(0.5)  # ranks (2, 1, 3) against (1, 2, 3)
    assert hydrogen["coverage90"] == 0.5 and oxygen["coverage90"] == pytest.approx(2 / 3)
    assert hydrogen["mean_expected_error"] == pytest.approx(0.3)
    assert oxygen["mean_expected_error"] == pytest.approx(5 / 3)
    assert hydrogen["force_mae"] == pytest.approx(0.2) and oxygen["force_mae"] == 2.0


def test_element_breakdown_without_ranking_or_interval():
    single = SetResults(
        "one",
        np.array([0.5, 0.5]),
        np.zeros(2),
        np.array([0.1, 0.2]),
        elements=np.array(["C", "N"]),
    )
    breakdown = element_breakdown(single)
    assert breakdown["C"]["spearman"] is None and breakdown["C"]["coverage90"] is None
    with pytest.raises(LTAUInputError, match="needs observed errors and elements"):
        element_breakdown(SetResults("x", np.ones(3), np.ones(3), np.ones(3)))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A report of two labelled sets (one shifted, with too narrow intervals) and one
    unlabelled set, with CRPS and NLL among the metrics."""
    folder = tmp_path_factory.mktemp("report")
    sets = [
        synthetic_set("in_domain", 2000, 0.1, seed=1),
        synthetic_set("shifted", 1500, 0.3, seed=2, width=0.5),
        SetResults("unlabelled", np.full(100, 0.2), np.random.default_rng(3).normal(0.6, 0.1, 100)),
    ]
    per_set = {}
    for results in sets[:2]:
        per_set[results.name] = {
            "n_atoms": results.observed.size,
            "spearman": metrics.spearman(results.expected_error, results.observed),
            "nll": 1.25,
            "force_rmse": metrics.rmse(results.observed),
            "crps": 0.0321,
            "coverage90": metrics.interval_coverage(
                results.observed, results.interval_lower, results.interval_upper
            ),
            "mystery_key": 7,
            "per_element": element_breakdown(results),
        }
    per_set["unlabelled"] = {"n_atoms": 100, "auroc_ood_score_vs_in_domain": 0.99}
    report = {"training": {"epochs": 3}, "sets": per_set}
    page = write_report(
        folder, "A <test> report", "Summary & more.", report, sets, in_domain="in_domain"
    )
    return folder, page, page.read_text(encoding="utf-8"), report, sets


def test_report_is_one_self_contained_file(written):
    folder, page, text, report, _ = written
    assert page == folder / "report.html"
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "report.html"]
    assert json.loads((folder / "metrics.json").read_text()) == json.loads(json.dumps(report))
    references = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert references and all(r.startswith("data:image/png;base64,") for r in references)
    for reference in references:
        assert base64.b64decode(reference.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<title>A &lt;test&gt; report</title>" in text and "Summary &amp; more." in text


def test_metric_table_has_labels_units_directions_in_fixed_order(written):
    _, _, text, _, _ = written
    table = text[text.index('<table class="metrics">') : text.index("</table>")]
    rows = re.findall(r'<tr><td class="label" title="([^"]+)">', table)
    # Fixed order (not the insertion or alphabetical order of the keys), unknown keys last.
    assert rows == [
        *("n_atoms", "force_rmse", "spearman", "coverage90", "crps", "nll"),
        *("auroc_ood_score_vs_in_domain", "mystery_key"),
    ]
    for key, unit, direction in (
        ("force_rmse", "eV/Å", "lower is better"),
        ("spearman", "", "higher is better"),
        ("crps", "eV/Å", "lower is better"),
        ("nll", "nats", "lower is better"),
        ("coverage90", "", "best at 0.90"),
    ):
        label = METRIC_INFO[key].label
        row = re.search(rf'title="{key}">{re.escape(label)}</td>(.*?)</tr>', table).group(1)
        assert row.startswith(f'<td class="note">{unit}</td><td class="note">{direction}</td>'), row
    assert "<td>0.0321</td>" in table and "<td>1.25</td>" in table
    assert "<th>in_domain</th><th>shifted</th><th>unlabelled</th>" in table
    assert "<td>–</td>" in table  # the unlabelled set has no CRPS
    assert "per_element" not in table


def test_per_element_section_shows_the_breakdown(written, tmp_path):
    _, _, text, report, _ = written
    section = text[text.index("<h2>Per element</h2>") :]
    assert '<td class="label" rowspan="2">in_domain</td><td class="label">Cu</td>' in section
    assert '<td class="label" rowspan="2">shifted</td><td class="label">Cu</td>' in section
    tiny = tiny_set()
    report = {"sets": {"tiny": {"n_atoms": 5, "per_element": element_breakdown(tiny)}}}
    text = write_report(tmp_path, "t", "s", report, [tiny]).read_text(encoding="utf-8")
    section = text[text.index("<h2>Per element</h2>") :]
    section = section[: section.index("</table>")]
    header = re.findall(r"<th[^>]*>(.*?)</th>", section)
    assert header == [
        *("set", "element", "atoms", "force RMSE<br>(eV/Å)", "Spearman ρ, predicted vs true error"),
        *("coverage of the 90% interval", "mean predicted expected error<br>(eV/Å)"),
        "mean true error (force MAE)<br>(eV/Å)",
    ]
    # n atoms, force RMSE, Spearman, coverage, mean predicted and mean true error, by hand.
    hydrogen = "<td>2</td><td>0.2236</td><td>1</td><td>0.5</td><td>0.3</td><td>0.2</td>"
    oxygen = "<td>3</td><td>2.16</td><td>0.5</td><td>0.6667</td><td>1.667</td><td>2</td>"
    assert (
        f'<tr><td class="label" rowspan="2">tiny</td><td class="label">H</td>{hydrogen}</tr>'
        f'<tr><td class="label">O</td>{oxygen}</tr>' in section
    )


def test_figures_include_sparsification_with_oracle(written):
    _, _, text, _, _ = written
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", text)
    assert len(captions) == len(re.findall(r'<img src="data:', text)) == 5  # no PIT given
    assert any(c.startswith("Sparsification") and "oracle" in c for c in captions)
    assert any("share their axes" in c for c in captions)


def test_reading_states_coverage_ranking_and_ood(written):
    _, _, text, _, sets = written
    reading = findings(sets, in_domain="in_domain")
    in_domain, shifted, comparison, unlabelled = reading
    assert "inside the 90% interval (close to nominal)" in in_domain
    assert "(below nominal: the intervals are too narrow)" in shifted
    assert "Spearman ρ =" in in_domain
    assert "Against in_domain, the mean true error in shifted is" in comparison
    scores = np.concatenate([sets[1].ood_score, sets[0].ood_score])
    labels = np.r_[np.ones(sets[1].ood_score.size), np.zeros(sets[0].ood_score.size)]
    auroc = metrics.auroc(scores, labels)
    assert 0.85 < auroc < 0.99  # N(0.3, 0.1) against N(0.1, 0.1): about 0.92
    assert f"separates shifted from in_domain with AUROC {auroc:.2f}" in comparison
    assert "separates unlabelled from in_domain" in unlabelled
    for paragraph in reading:
        assert f"<p>{html.escape(paragraph)}</p>" in text


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SetResults("a", np.ones(3), np.ones(2)), r"ood_score must have shape \(3,\)"),
        (lambda: SetResults("a", np.ones(3), np.ones(3), np.ones(4)), "observed must have shape"),
        (lambda: SetResults("a", np.array([]), np.array([])), "set 'a' is empty"),
        (lambda: SetResults("", np.ones(1), np.ones(1)), "non-empty name"),
        (lambda: SetResults("a", np.ones(2), np.array([1.0, np.nan])), "NaN or infinity"),
        (
            lambda: SetResults("a", np.ones(2), np.ones(2), np.ones(2), interval_lower=np.ones(2)),
            "both interval bounds",
        ),
        (
            lambda: SetResults("a", np.ones(2), np.ones(2), np.ones(2), pit=np.array([0.5, 2.0])),
            r"pit values must lie in \[0, 1\]",
        ),
        (lambda: SetResults("a", np.ones(2), np.ones(2), pit=np.ones(2)), "need observed"),
        (
            lambda: SetResults("a", np.ones(2), np.ones(2), elements=np.array(["H"])),
            "elements must have shape",
        ),
    ],
)
def test_bad_set_results(make, message):
    with pytest.raises(LTAUInputError, match=message):
        make()


def test_bad_report_input(tmp_path):
    one = SetResults("a", np.ones(3), np.ones(3))
    with pytest.raises(LTAUInputError, match="at least one SetResults"):
        write_report(tmp_path, "t", "s", {}, [])
    with pytest.raises(LTAUInputError, match="unique"):
        write_report(tmp_path, "t", "s", {}, [one, one])
    with pytest.raises(LTAUInputError, match="in-domain set 'b'"):
        write_report(tmp_path, "t", "s", {}, [one], in_domain="b")
    with pytest.raises(LTAUInputError, match="map set names to dictionaries"):
        write_report(tmp_path, "t", "s", {"sets": {"a": 1.0}}, [one])
    assert not any(tmp_path.iterdir())
    text = write_report(tmp_path, "t", "s", {}, [one]).read_text(encoding="utf-8")
    assert "No set has observed errors" in text and text.count('<img src="data:') == 1


def test_core_and_report_import_without_matplotlib():
    code = (
        "import sys, ltau, ltau.report, ltau.metrics, ltau.calibration, ltau.selection, "
        "ltau.atomistic.pipeline, ltau.cli; assert 'matplotlib' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
