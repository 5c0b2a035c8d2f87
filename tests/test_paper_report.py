"""docs/paper: results.json is consistent with the README's tables, its plots and its own verdict rules.

The runs behind the report take about 2 hours on 2 CPU cores (`python docs/paper/reproduce.py`) and are
not repeated here; what is checked is that the committed report says what its numbers say.
"""

import importlib.util
import json
import re
from pathlib import Path

import pytest

PAPER = Path(__file__).resolve().parents[1] / "docs" / "paper"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", PAPER / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results():
    return json.loads((PAPER / "results.json").read_text())


@pytest.fixture(scope="module")
def readme():
    return (PAPER / "README.md").read_text()


def test_every_finding_states_claim_rule_and_a_verdict(results):
    findings = results["findings"]
    assert set(findings) == {"dead_latents", "progressive", "scaling", "quality"}
    for name, finding in findings.items():
        assert finding["claim"] and finding["rule"], name
        verdicts = finding["verdict"] if isinstance(finding["verdict"], dict) else {name: finding["verdict"]}
        assert set(verdicts.values()) <= {"agree", "disagree"}, name


def test_the_readme_tables_are_the_ones_results_json_gives(reproduce, results, readme):
    block = readme.split(reproduce.TABLES_BEGIN, 1)[1].split(reproduce.TABLES_END, 1)[0]
    assert block.strip() == reproduce.tables(results).strip()


def test_every_plot_exists_is_named_in_the_readme_and_made_by_its_command(results, readme):
    assert "python docs/paper/reproduce.py" in readme
    for name in results["plots"]:
        assert (PAPER / name).read_bytes()[:8] == PNG_MAGIC, name
        assert f"({name})" in readme, f"the README does not show {name}"
    shown = set(re.findall(r"\]\(([\w.]+\.png)\)", readme))
    assert shown <= set(results["plots"]), f"the README shows plots the script does not write: {shown - set(results['plots'])}"


def test_recorded_commands_are_the_scripts_plan(reproduce, results):
    assert results["commands"] == reproduce.Plan(Path("paper-runs")).build().commands()


def test_dead_latent_verdict_follows_from_the_numbers(results):
    dead = results["findings"]["dead_latents"]
    at_largest = {row["variant"]: row["dead_fraction"] for row in dead["rows"] if row["n_latents"] == dead["largest_n"]}
    assert (dead["dead_with"], dead["dead_without"]) == (at_largest["auxk_tied"], at_largest["none"])
    assert dead["largest_n"] >= 65_536
    agree = dead["dead_with"] <= 0.10 and dead["dead_without"] >= 0.20
    assert dead["verdict"] == ("agree" if agree else "disagree")
    for row in dead["rows"]:  # the same tokens-per-latent budget at every n
        assert row["tokens"] == 32 * row["n_latents"]


def test_progressive_verdict_follows_from_the_curves(results):
    prog = results["findings"]["progressive"]
    k = prog["k"]
    assert prog["k_prime"][0] == k // 4 and prog["k_prime"][-1] == 4 * k
    at = {variant: dict(zip(prog["k_prime"], curve)) for variant, curve in prog["fvu"].items()}
    assert prog["fvu_at_4k"] == {variant: at[variant][4 * k] for variant in at}
    assert prog["fvu_at_k"] == {variant: at[variant][k] for variant in at}
    topk, multi = at["topk"], at["multi_topk"]
    agree = multi[4 * k] <= multi[k] and topk[4 * k] > topk[k] and multi[4 * k] < topk[4 * k]
    assert prog["verdict"] == ("agree" if agree else "disagree")


def test_scaling_verdict_and_fit_are_the_ones_hfsae_scaling_wrote(results):
    scal = results["findings"]["scaling"]
    written = json.loads((PAPER / "scaling.json").read_text())
    assert scal["loss_n"] == written["loss_n"] and scal["loss_nk"] == written["loss_nk"]
    fit = scal["loss_n"][str(scal["k"])]
    assert (scal["exponent"], scal["exponent_error"]) == (fit["coefficients"]["beta"], fit["standard_errors"]["beta"])
    assert len(fit["log_residuals"]) == fit["n_points"] >= 4
    assert scal["verdict"] == ("agree" if scal["exponent"] + 2 * scal["exponent_error"] < 0 else "disagree")


def test_quality_verdicts_follow_from_the_rank_correlations(reproduce, results):
    quality = results["findings"]["quality"]
    n = [row["n_latents"] for row in quality["series"]]
    for key, (_, direction) in reproduce.QUALITY_METRICS.items():
        rho = reproduce.spearman(n, [row[key] for row in quality["series"]])
        assert quality["trends"][key]["spearman_with_n"] == pytest.approx(rho)
        improves = rho >= 0.5 if direction == "up" else rho <= -0.5
        assert quality["verdict"][key] == ("agree" if improves else "disagree"), key
    rho = reproduce.spearman([row["fvu"] for row in quality["evaluated"]], [row["delta_ce"] for row in quality["evaluated"]])
    assert quality["delta_ce_vs_fvu_spearman"] == pytest.approx(rho)
    assert quality["verdict"]["delta_ce_tracks_fvu"] == ("agree" if rho >= 0.5 else "disagree")
