"""Each broken image is attributed to the families of the attacks that broke it."""
import torch

from dwf_lab.evaluation.attribution import attribution_rows, broken_by_family, family_of
from dwf_lab.evaluation.keys import WORST
from dwf_lab.evaluation.metrics import pack_bits


def _bits(*broken, n=8):
    c = torch.ones(n, dtype=torch.bool)
    c[list(broken)] = False
    return c


def test_each_broken_image_goes_to_one_category():
    correct = {"SA": _bits(7), "pgd:20": _bits(0, 7), "pgd-20": _bits(0, 7), "routing": _bits(1, 3, 7),
               "fixed-gate": _bits(2, 3, 7), "fgsm:0.09": _bits(4, 7), WORST: _bits(0, 1, 2, 3, 7)}
    assert (family_of("pgd:20"), family_of("routing"), family_of("fixed-gate")) == \
        ("generic", "router-aware", "expert-aware")
    got = broken_by_family(correct, 8 / 255)
    # image 0: PGD only; 1: routing only; 2: fixed gate only; 3: both gate-aware; 4: FGSM at 0.09 is
    # another threat model; 7: wrong on clean images, broken by nothing
    assert got == {"generic only": 1, "router-aware only": 1, "expert-aware only": 1, "several": 1}
    rec = {"model": "mixture", "row": "DWF", "seed": 0, "n_test": 8,
           "per_example": {k: pack_bits(v) for k, v in correct.items()}}
    assert attribution_rows([rec]) == [{"model": "DWF", "seed": 0, "images": 8, **got}]


def test_the_report_has_the_attribution_and_says_which_point_each_attack_scores(tmp_path):
    import json

    from dwf_lab.reporting.render import attribution_section
    assert attribution_section(tmp_path) is None                # nothing evaluated: no section
    correct = {"SA": _bits(7), "pgd:20": _bits(0, 7), "routing": _bits(1, 3, 7), "fixed-gate": _bits(2, 3, 7)}
    rec = {"model": "mixture", "row": "DWF", "seed": 0, "n_test": 8, "dataset": "synthetic",
           "metrics": {"SA": 87.5}, "per_example": {k: pack_bits(v) for k, v in correct.items()}}
    (tmp_path / "mixture_seed0.json").write_text(json.dumps(rec))
    sec = attribution_section(tmp_path)
    assert sec["rows"] == [["DWF", 0, 8, 1, 1, 1, 1]]
    scored = next(n for n in sec["notes"] if n.startswith("Point scored"))
    assert "pgd:20" in scored and "routing" in scored and "fixed-gate" in scored
