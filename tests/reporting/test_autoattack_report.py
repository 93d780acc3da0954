"""The report's AutoAttack parts: the column says which AutoAttack it is, the stages are shown and read."""
from dwf_lab.reporting.readings import autoattack_reading
from dwf_lab.reporting.render import to_markdown
from dwf_lab.reporting.tables import autoattack_headers, autoattack_label, autoattack_stage_rows, build_tables

SUITE = "pyautoattack (the original AutoAttack, Croce & Hein 2020)"


def _rec(row: str, aa: float, settings: dict | None, stages: dict | None) -> dict:
    rec = {"model": row.lower(), "row": row, "seed": 0, "dataset": "cifar10-subset", "n_test": 200,
           "metrics": {"SA": stages["clean"] if stages else 40.0, "autoattack": aa}}
    if settings is not None:
        rec["attack_settings"] = {"autoattack": settings}
    if stages is not None:
        rec["autoattack_stages"] = stages
    return rec


STANDARD = {"suite": SUITE, "version": "standard", "standard": True}
REDUCED = {"suite": SUITE, "version": "standard", "standard": False}
STAGES = {"clean": 40.0, "apgd-ce": 22.0, "apgd-t": 16.0, "fab-t": 16.0, "square": 14.5}


def test_the_column_names_the_suite_and_a_reduced_budget_is_never_standard():
    official = _rec("DWF", 14.5, STANDARD, STAGES)
    reduced = _rec("DWF", 15.0, REDUCED, STAGES)
    older = _rec("DWF", 15.0, None, None)
    assert autoattack_label(official) == "AutoAttack (official, standard)"
    assert "reduced budget: NOT the standard suite" in autoattack_label(reduced)
    assert "not the official suite" in autoattack_label(older)
    assert autoattack_label({"metrics": {"SA": 40.0}}) is None
    assert autoattack_headers([official]) == {"autoattack": "autoattack = AutoAttack (official, standard)"}
    mixed = autoattack_headers([official, reduced])["autoattack"]
    assert "mixed" in mixed and "(official, standard) (1)" in mixed and "reduced budget" in mixed
    md = to_markdown(build_tables([official, _rec("ResNet-18 (PGD-AT)", 12.0, STANDARD, STAGES)]))
    header = next(line for line in md.splitlines() if line.startswith("| Model | runs |") and "autoattack" in line)
    assert "| autoattack = AutoAttack (official, standard) |" in header


def test_stage_rows_and_their_reading():
    older = _rec("ResNet-18", 0.5, None, None)
    older["adaptive"] = {"autoattack_stages": {"clean": 40.0, "after APGD-CE": 1.0}}   # an older kit's cascade
    kept_under_adaptive = _rec("SoE", 9.0, None, None)
    kept_under_adaptive["adaptive"] = {"attack_settings": {"autoattack": REDUCED}, "autoattack_stages": STAGES}
    rows = autoattack_stage_rows([_rec("DWF", 14.5, STANDARD, STAGES), older, kept_under_adaptive])
    assert [r["model"] for r in rows] == ["DWF", "SoE"] and rows[0]["suite"] == "AutoAttack (official, standard)"
    assert "reduced budget" in rows[1]["suite"]
    assert [rows[0][k] for k in ("clean", "apgd-ce", "apgd-t", "fab-t", "square", "AutoAttack")] == \
        [40.0, 22.0, 16.0, 16.0, 14.5, 14.5]
    text = autoattack_reading([_rec("DWF", 14.5, STANDARD, STAGES)])
    assert "APGD-CE 18.0, APGD-T 6.0, Square 1.5" in text
    assert "overstated its robustness by 7.5 points" in text and "Square, which never looks at a gradient" in text
    flat = autoattack_reading([_rec("PGD-AT", 20.0, STANDARD, {"clean": 35.0, "apgd-ce": 20.0, "apgd-t": 20.0})])
    assert "overstated" not in flat and "Square" not in flat
    assert autoattack_reading([]) == "- No AutoAttack stages recorded yet."
