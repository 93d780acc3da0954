"""The audit rules (dwf_lab.reporting.audit) on the paper's published tables and on made-up ones.

The paper's numbers are what notebook 08 audits: the rules must flag what its tables contradict
(PGD weaker than one FGSM step for FGSM-AT, PGD-AT and ADVMoE; plain networks flat and high
under PGD; ADVMoE's SVHN cliff at 100 steps) and pass what they do not (DWF's PGD column,
every row's clean bound). Made-up tables check that each rule can pass, stay within noise
and fail, and that a rule without its columns says nothing.
"""
from pathlib import Path

import pytest

from dwf_lab.evaluation.records import load_results
from dwf_lab.reporting.audit import (
    STATUSES,
    AuditTable,
    Cell,
    audit,
    audit_reading,
    finding_rows,
    paper_table,
    rule_rows,
    run_table,
    summary_rows,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "eval_small"


def _status(findings, rule, row):
    hits = [f for f in findings if f.rule == rule and f.row == row]
    assert hits, f"rule {rule} did not check {row}"
    return {f.status for f in hits}


@pytest.fixture(scope="module")
def cifar():
    return audit(paper_table("cifar10"))


def test_the_papers_pgd_is_weaker_than_one_fgsm_step_for_three_baselines(cifar):
    for row in ("ResNet-18 (FGSM-AT)", "ResNet-18 (PGD-AT)", "ADVMoE"):
        assert _status(cifar, "pgd-vs-fgsm", row) == {"flagged"}, row
    assert _status(cifar, "pgd-vs-fgsm", "DWF") == {"ok"}
    assert _status(cifar, "pgd-vs-fgsm", "ResNet-18") == {"ok"}      # 37.72 PGD-10 < 40.97 FGSM 0.03


def test_plain_networks_are_high_and_flat_under_the_papers_pgd(cifar):
    for row in ("ResNet-18", "VGG-19", "MobileNet-V2"):
        assert _status(cifar, "undefended", row) == {"flagged"}
        assert _status(cifar, "undefended-flat", row) == {"flagged"}
    assert not [f for f in cifar if f.rule.startswith("undefended") and f.row == "DWF"]


def test_advmoe_falls_off_a_cliff_on_svhn_and_not_on_cifar(cifar):
    svhn = audit(paper_table("svhn"))
    assert _status(svhn, "late-cliff", "ADVMoE") == {"flagged"}
    assert _status(cifar, "late-cliff", "ADVMoE") == {"ok"}


def test_the_paper_passes_the_rules_it_does_not_contradict(cifar):
    assert all(f.status == "ok" for f in cifar if f.rule == "clean-bound")
    assert not [f for f in cifar if f.rule in ("eps-growth", "pgd-steps", "restarts") and f.status == "flagged"]
    # DWF's mean over five runs carries the runs' spread: its cells have larger errors than a single run's
    t = paper_table("cifar10")
    assert t.cells["DWF"]["pgd:20"].se > t.cells["ResNet-18 (PGD-AT)"]["pgd:20"].se


def test_the_baselines_sit_above_the_published_references(cifar):
    assert _status(cifar, "reference", "ResNet-18 (PGD-AT)") == {"flagged"}
    assert _status(cifar, "reference", "ResNet-18 (FGSM-AT)") == {"flagged"}
    assert not [f for f in audit(paper_table("svhn")) if f.rule == "reference"]   # CIFAR-10 references only


def _table(cells, dataset="synthetic", n=2500):   # 2,500 images: a binomial SE of 1 point at 50%
    return AuditTable("made up", dataset, {row: {m: Cell(v, se, n) for m, (v, se) in c.items()}
                                           for row, c in cells.items()})


def test_each_rule_can_pass_stay_within_noise_and_fail():
    sound = {"SA": (80, 1), "fgsm:0.01": (60, 1), "fgsm:0.03": (50, 1), "pgd:10": (40, 1),
             "pgd:50": (38, 1), "pgd:100-a": (37, 1), "pgd:100-ms": (36, 1)}
    noisy = dict(sound, **{"pgd:50": (40.5, 1)})                  # a rise of 0.5 with SE 1.4
    broken = dict(sound, **{"fgsm:0.03": (30, 1), "pgd:100-ms": (45, 1), "fgsm:0.01": (90, 1)})
    f = audit(_table({"sound": sound, "noisy": noisy, "broken": broken}))
    assert {x.status for x in f if x.row == "sound"} == {"ok"}
    assert _status(f, "pgd-steps", "noisy") == {"within noise"}
    for rule in ("pgd-vs-fgsm", "restarts", "clean-bound"):
        assert _status(f, rule, "broken") == {"flagged"}, rule
    assert [r["model"] for r in finding_rows(f)] == ["broken"] * 3
    summary = {r["rule"]: r for r in summary_rows(f)}
    assert summary["pgd-steps"]["within noise"] == 1 and summary["clean-bound"]["flagged rows"] == "broken"
    assert sum(summary["pgd-vs-fgsm"][s] for s in STATUSES) == 3


def test_an_undefended_network_that_falls_passes():
    f = audit(_table({"ResNet-18": {"SA": (90, 1), "pgd:10": (2, 0.5), "pgd:50": (1.5, 0.5)},
                      "VGG-19": {"SA": (90, 1), "pgd:10": (40, 1), "pgd:50": (15, 1)}}))
    assert _status(f, "undefended", "ResNet-18") == {"ok"}
    assert _status(f, "undefended-flat", "ResNet-18") == {"ok"}   # already at the floor
    assert _status(f, "undefended", "VGG-19") == {"flagged"}       # 15% left, 5 SE above the 10% limit
    assert _status(f, "undefended-flat", "VGG-19") == {"ok"}       # but more steps took 25 points
    # on a few test images a curve that barely falls is not evidence of a stalled attack
    few = audit(_table({"ResNet-18": {"pgd:2": (12, 4), "pgd:4": (11.5, 4)}}))
    assert _status(few, "undefended-flat", "ResNet-18") == {"within noise"}


def test_a_rule_without_its_columns_says_nothing():
    assert audit(_table({"DWF": {"SA": (50, 5)}})) == []
    assert summary_rows([]) == []
    with pytest.raises(ValueError, match="unknown audit rule"):
        audit(_table({}), ["no-such-rule"])
    with pytest.raises(ValueError, match="no tables for 'mnist'"):
        paper_table("mnist")


def test_a_run_is_audited_with_its_own_test_size_and_seeds():
    t = run_table(load_results(FIXTURE))
    assert t.dataset == "cifar10-subset" and abs(t.pgd_eps - 8 / 255) < 1e-6
    dwf = t.cells["DWF"]
    assert 1.0 < dwf["SA"].se < 3.0                    # 1,017 images (and two seeds)
    assert {f.rule for f in audit(t)} >= {"pgd-vs-fgsm", "clean-bound"}


def test_the_reading_names_what_was_flagged(cifar):
    text = audit_reading(cifar, "the paper")
    assert "**pgd-vs-fgsm**" in text and "flagged for ResNet-18 (FGSM-AT), ResNet-18 (PGD-AT)" in text
    assert "**clean-bound** (no attacked accuracy above the clean one), 13 checks: nothing flagged." in text
    assert audit_reading([], "this run") == "- No rule applies to this run: it has none of the columns the rules read."
    assert [r["rule"] for r in rule_rows()][:2] == ["pgd-vs-fgsm", "eps-growth"]


def test_what_notebook_08_says_about_the_paper_holds(cifar):
    """Notebook 08's prose on the published tables: DWF's rows pass every rule on both datasets;
    the PGD-vs-FGSM rule flags the two AT ResNet-18s by 9.6 and 16.6 points and the two mixtures by < 2."""
    svhn = audit(paper_table("svhn"))
    assert {f.status for f in cifar + svhn if f.row == "DWF"} == {"ok"}
    by_row = {f.row: f for f in cifar if f.rule == "pgd-vs-fgsm"}
    assert all(9.5 <= by_row[r].excess <= 16.7 for r in ("ResNet-18 (FGSM-AT)", "ResNet-18 (PGD-AT)"))
    assert all(by_row[r].status == "flagged" and by_row[r].excess < 2 for r in ("SoE", "ADVMoE"))
