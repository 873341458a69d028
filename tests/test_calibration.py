"""Calibrated probabilities: the fit, the stored form read as hostile, calls kept, the CLI."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from launch import LABELS, random_dataset, tiny_model_dir

from synnav_cli.calibration import (
    METHODS,
    Calibration,
    expected_calibration_error,
    fit_calibration,
)
from synnav_cli.cli.main import cli
from synnav_cli.errors import UserError
from synnav_cli.modeldir import METADATA_FILE, read_model_info


def _overconfident(n: int, seed: int, scale: float = 1.0, shift: float = 2.0):
    """Scores of a class-weighted model: a true rate q is reported as
    sigmoid(scale * logit(q) + shift) (labels, scores)."""
    rng = np.random.default_rng(seed)
    q = rng.beta(1.0, 6.0, size=n)
    y = (rng.random(n) < q).astype(np.float32)
    z = np.log(q) - np.log1p(-q)
    return y, 1.0 / (1.0 + np.exp(-(scale * z + shift)))


# A temperature cannot undo a shift (class weighting's), only a scale; the others undo both.
@pytest.mark.parametrize(
    ("method", "scale", "shift"),
    [("auto", 1.0, 2.0), ("platt", 1.0, 2.0), ("isotonic", 1.0, 2.0), ("temperature", 3.0, 0.0)],
)
def test_the_fit_lowers_calibration_error_on_dev_and_on_held_out_data(method, scale, shift):
    y, p = _overconfident(800, seed=1, scale=scale, shift=shift)
    y[::17] = np.nan  # unknown values are left out, not read as negatives
    calibration, dev_ece = fit_calibration(y[:, None], p[:, None], ["ER"], method)
    before, after = dev_ece["ER"]
    assert before > 0.1
    assert after < before / 3
    held_y, held_p = _overconfident(800, seed=2, scale=scale, shift=shift)
    held_after = expected_calibration_error(held_y, calibration.apply(held_p[:, None])[:, 0])
    assert held_after < expected_calibration_error(held_y, held_p) / 2


def test_auto_picks_per_label_and_skips_what_cannot_be_fitted():
    y, p = _overconfident(600, seed=3)
    few = np.full_like(y, np.nan)
    few[:40] = 0
    few[:3] = 1  # three positives: under MIN_CLASS
    constant = np.full_like(p, 0.5)  # a label the model never learned
    labels = np.stack([y, few, y], axis=1)
    scores = np.stack([p, p, constant], axis=1)
    calibration, _ = fit_calibration(labels, scores, ["a", "b", "c"], "auto")
    assert calibration.maps[0] is not None and calibration.maps[0].method in METHODS
    assert calibration.maps[1] is None and calibration.maps[2] is None
    assert calibration.calibrated_labels == ["a"]
    assert np.array_equal(calibration.apply(scores)[:, 1], scores[:, 1].astype(np.float32))


@pytest.mark.parametrize("method", METHODS)
def test_a_threshold_on_the_calibrated_scale_calls_exactly_the_same_proteins(method):
    y, p = _overconfident(500, seed=4)
    mapping = fit_calibration(y[:, None], p[:, None], ["ER"], method)[0].maps[0]
    raw = np.concatenate([np.linspace(0, 1, 2001), p])
    shown = mapping.apply(raw)
    for t in (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.8, 0.99, 1.0):
        cut = mapping.raw_threshold(t)
        assert np.array_equal(raw >= cut, shown >= t), (method, t)


def test_the_stored_form_reads_back_to_the_same_maps():
    y, p = _overconfident(500, seed=5)
    labels, scores = np.stack([y, y, y], 1), np.stack([p, p, p], 1)
    maps = [fit_calibration(labels[:, :1], scores[:, :1], ["x"], m)[0].maps[0] for m in METHODS]
    stored = Calibration(["a", "b", "c"], maps).to_meta()
    back = Calibration.from_meta(json.loads(json.dumps(stored)), ["a", "b", "c"])
    assert [m.method for m in back.maps] == list(METHODS)
    assert np.allclose(back.apply(scores), Calibration(["a", "b", "c"], maps).apply(scores), atol=1e-5)


HOSTILE = [
    ("not an object", []),
    ("unknown label", {"labels": {"golgi": {"method": "temperature", "temperature": 1.0}}}),
    ("unknown method", {"labels": {"ER": {"method": "pickle"}}}),
    ("zero temperature", {"labels": {"ER": {"method": "temperature", "temperature": 0}}}),
    ("bool temperature", {"labels": {"ER": {"method": "temperature", "temperature": True}}}),
    ("platt flips", {"labels": {"ER": {"method": "platt", "scale": -1.0, "bias": 0.0}}}),
    ("isotonic falls", {"labels": {"ER": {"method": "isotonic", "x": [0.1, 0.5], "y": [0.6, 0.2]}}}),
    ("isotonic x repeats", {"labels": {"ER": {"method": "isotonic", "x": [0.1, 0.1], "y": [0.1, 0.2]}}}),
    ("isotonic lengths", {"labels": {"ER": {"method": "isotonic", "x": [0.1, 0.5, 0.9], "y": [0.1, 0.2]}}}),
    ("isotonic range", {"labels": {"ER": {"method": "isotonic", "x": [0.1, 0.5], "y": [0.1, 1.5]}}}),
    ("isotonic text", {"labels": {"ER": {"method": "isotonic", "x": ["0.1", 0.5], "y": [0.1, 0.2]}}}),
    ("too many knots", {"labels": {"ER": {"method": "isotonic", "x": list(np.linspace(0, 1, 5000)),
                                          "y": list(np.linspace(0, 1, 5000))}}}),
]


@pytest.mark.parametrize(("why", "stored"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_damaged_calibration_is_one_line_naming_it(tmp_path, runner, why, stored):
    model = tiny_model_dir(tmp_path / "m", labels=["ER", "nucleus"])
    meta = json.loads((model / METADATA_FILE).read_text())
    meta["calibration"] = stored
    (model / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(UserError, match="calibration"):
        read_model_info(model)
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">a\n" + "MKTAYIAKQRQISFVKSHFSRQ" * 3 + "\n")
    result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model)])
    assert result.exit_code == 1
    assert "calibration" in result.output and "Traceback" not in result.output


def _dev_dataset(path, count=160, rate=0.1, seed=0):
    """Random proteins, all in dev, each label true for about ``rate`` of them."""
    return random_dataset(path, count, rate=rate, seed=seed)


def _rows(output: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(output), delimiter="\t"))


def test_calibrate_keeps_the_calls_lowers_dev_ece_and_says_so_in_every_row(tmp_path, runner):
    model = tiny_model_dir(tmp_path / "plain")
    data = _dev_dataset(tmp_path / "dev.json")
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">{r['entry']}\n{r['sequence']}\n" for r in json.loads(data.read_text())[:40]))

    before = runner.invoke(cli, ["predict", str(fasta), "--model", str(model)])
    assert before.exit_code == 0, before.output
    plain = _rows(before.stdout)
    assert {row["calibration"] for row in plain} == {"uncalibrated"}

    out = tmp_path / "calibrated"
    done = runner.invoke(cli, ["calibrate", "--model", str(model), "--data", str(data), "--out", str(out)])
    assert done.exit_code == 0, done.output
    info = read_model_info(out)
    assert info.calibration is not None and info.calibration.calibrated_labels == LABELS[:3]
    assert info.thresholds == read_model_info(model).thresholds
    # The model it came from is left as it was; --out is not replaced without --force.
    assert "calibration" not in json.loads((model / METADATA_FILE).read_text())
    again = runner.invoke(cli, ["calibrate", "--model", str(model), "--data", str(data), "--out", str(out)])
    assert again.exit_code == 1 and "--force" in again.output

    after = runner.invoke(cli, ["predict", str(fasta), "--model", str(out)])
    assert after.exit_code == 0, after.output
    calibrated = _rows(after.stdout)
    assert {row["calibration"] for row in calibrated} == {"calibrated"}
    assert [r["predicted"] for r in calibrated] == [r["predicted"] for r in plain]
    column = LABELS[0]
    assert [r[column] for r in calibrated] != [r[column] for r in plain]
    assert "Probabilities: calibrated on dev" in after.stderr

    scored = runner.invoke(cli, ["evaluate", "--model", str(out), "--data", str(data), "--split", "dev",
                                 "--format", "json"])
    assert scored.exit_code == 0, scored.output
    result = json.loads(scored.stdout)
    assert result["calibrated"] == LABELS[:3]
    assert result["mean"]["ece"] < result["mean"]["ece_raw"] / 2


def test_a_threshold_override_is_a_calibrated_probability(tmp_path, runner):
    model = tiny_model_dir(tmp_path / "plain")
    data = _dev_dataset(tmp_path / "dev.json")
    out = tmp_path / "calibrated"
    assert runner.invoke(cli, ["calibrate", "-m", str(model), "-d", str(data), "-o", str(out)]).exit_code == 0
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">{r['entry']}\n{r['sequence']}\n" for r in json.loads(data.read_text())))
    rows = _rows(runner.invoke(cli, ["predict", str(fasta), "-m", str(out)]).stdout)
    values = sorted(float(r["cytosol"]) for r in rows)
    cut = values[len(values) // 2]
    result = runner.invoke(cli, ["predict", str(fasta), "-m", str(out), "--threshold", f"cytosol={cut}"])
    called = {r["id"] for r in _rows(result.stdout) if "cytosol" in r["predicted"].split(";")}
    # Probabilities are written to 4 decimals: compare away from the cut.
    assert {r["id"] for r in rows if float(r["cytosol"]) > cut + 1e-4} <= called
    assert not called & {r["id"] for r in rows if float(r["cytosol"]) < cut - 1e-4}
    assert f"cytosol {round(cut, 4):g}" in result.stderr


def test_reliability_figures(tmp_path, runner):
    pytest.importorskip("matplotlib")
    model = tiny_model_dir(tmp_path / "plain")
    data = _dev_dataset(tmp_path / "dev.json", count=60)
    figures = tmp_path / "figures"
    result = runner.invoke(cli, ["evaluate", "-m", str(model), "-d", str(data), "--split", "dev",
                                 "--plots", str(figures)])
    assert result.exit_code == 0, result.output
    assert (figures / "reliability-cytosol.png").stat().st_size > 1000


def test_train_fits_a_calibration_on_dev_that_lowers_its_error(tmp_path, runner):
    data = tmp_path / "data.json"
    _dev_dataset(data, count=120, rate=0.15, seed=7)
    records = json.loads(data.read_text())
    for i, record in enumerate(records):
        record["split"] = "train" if i < 60 else "dev"
    data.write_text(json.dumps(records))
    out = tmp_path / "trained"
    result = runner.invoke(cli, ["train", "--backbone", "tiny", "--data", str(data), "--out", str(out),
                                 "--epochs", "1", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    info = read_model_info(out)
    stored = info.meta["calibration"]
    assert set(stored["labels"]) == set(LABELS[:3])
    assert info.calibration is not None and info.calibration.calibrated_labels
    for name in info.calibration.calibrated_labels:
        before, after = stored["labels"][name]["dev_ece"]
        assert after < before


def test_compare_shows_calibrated_probabilities_and_keeps_the_calls(tmp_path, runner):
    plain_model = tiny_model_dir(tmp_path / "plain")
    data = _dev_dataset(tmp_path / "dev.json")
    model = tmp_path / "calibrated"
    assert runner.invoke(cli, ["calibrate", "-m", str(plain_model), "-d", str(data), "-o", str(model)]).exit_code == 0
    wild = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSG"
    fasta = tmp_path / "pairs.fasta"
    fasta.write_text(f">P1\n{wild}\n>P1_mut_I6W\n{wild[:5]}W{wild[6:]}\n")
    shown = {r["id"]: r for r in _rows(runner.invoke(cli, ["predict", str(fasta), "-m", str(model)]).stdout)}
    compared = runner.invoke(cli, ["predict", str(fasta), "-m", str(model), "--compare"])
    assert compared.exit_code == 0, compared.output
    row = _rows(compared.stdout)[0]
    for label in LABELS[:3]:
        assert float(row[f"mutant_{label}"]) == pytest.approx(float(shown["P1_mut_I6W"][label]), abs=1e-4)
        assert float(row[f"wild_type_{label}"]) == pytest.approx(float(shown["P1"][label]), abs=1e-4)
    before = _rows(runner.invoke(cli, ["predict", str(fasta), "-m", str(plain_model), "--compare"]).stdout)[0]
    assert row["predicted"] == before["predicted"] == shown["P1_mut_I6W"]["predicted"]
    assert [row[f"mutant_{n}"] for n in LABELS[:3]] != [before[f"mutant_{n}"] for n in LABELS[:3]]


def test_models_show_says_how_each_label_is_calibrated(tmp_path, runner):
    plain = tiny_model_dir(tmp_path / "plain")
    shown = runner.invoke(cli, ["models", "show", str(plain)])
    assert shown.exit_code == 0 and "calibration:    none" in shown.stdout
    out = tmp_path / "calibrated"
    data = _dev_dataset(tmp_path / "dev.json")
    assert runner.invoke(cli, ["calibrate", "-m", str(plain), "-d", str(data), "-o", str(out),
                               "--method", "isotonic"]).exit_code == 0
    details = json.loads(runner.invoke(cli, ["models", "show", str(out), "--json"]).stdout)
    assert details["calibration"] == {name: "isotonic" for name in LABELS[:3]}
    assert "cytosol isotonic" in runner.invoke(cli, ["models", "show", str(out)]).stdout
