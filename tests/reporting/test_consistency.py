"""One meaning for "PGD beats FGSM" and "accuracy falls as ε grows" (dwf_lab.evaluation.consistency).

The same numbers go to the three places that judge them, notebook 05's reading, notebook 08's
audit and the gradient-masking checklist; all three must flag a row beyond noise and none a row
within it (each used to have its own threshold: 2 points, 2 SE, 2 points plus one image).
"""
import pytest
import torch

from dwf_lab.evaluation import checklist
from dwf_lab.evaluation.consistency import RULES, Z, binomial_se, check_pair, eps_growth, pgd_vs_fgsm
from dwf_lab.reporting.audit import audit, run_table
from dwf_lab.reporting.readings import protocol_reading

EPS = 8 / 255
from tinymodels import tiny_trained  # noqa: E402  (tests/ is on sys.path)


def test_the_threshold_is_two_binomial_standard_errors_and_at_least_one_image():
    k = check_pair({"pgd:20": 44.0, "fgsm:0.03": 40.0}, 200, "pgd:20", "fgsm:0.03")
    assert k.se == pytest.approx((binomial_se(44.0, 200) ** 2 + binomial_se(40.0, 200) ** 2) ** 0.5)
    assert k.limit == pytest.approx(Z * k.se) and k.status == "within noise"
    assert check_pair({"a": 30.0, "b": 40.0}, 200, "a", "b").status == "ok"
    # one image is never a finding, whatever n
    for n in (1, 10, 10000):
        assert check_pair({"a": 100.0, "b": 100.0 - 100 / n}, n, "a", "b").status == "within noise"
    assert [r.name for r in RULES] == ["pgd-vs-fgsm", "eps-growth"]
    # PGD's ball must hold the FGSM step: FGSM at 0.05 is not compared with PGD at 8/255
    assert pgd_vs_fgsm({"fgsm:0.05": 10.0, "pgd:20": 50.0}, 200) is None
    assert eps_growth({"fgsm:0.01": 50.0}, 200) is None


def _three_verdicts(monkeypatch, a: float, b: float, pgd: float, n: int = 200) -> dict[str, dict[str, bool]]:
    """Per consumer and rule, whether it flags the row FGSM (or PGD@ε) a → b as ε grows and PGD ``pgd``
    against the FGSM step b, all on ``n`` images."""
    rec = {"model": "m", "row": "M", "seed": 0, "dataset": "synthetic", "n_test": n,
           "metrics": {"SA": 90.0, "fgsm:0.01": a, "fgsm:0.02": b, "pgd:20": pgd}, "settings": {"pgd_eps": EPS}}
    found = {f.rule: f.status for f in audit(run_table([rec]), [r.name for r in RULES])}
    text = protocol_reading([rec])
    # the checklist measures FGSM at ε = 8/255 (b), PGD-20 (pgd) and PGD over an ε grid (a, b, ~0)
    model, data = tiny_trained(0)
    grid = {300: a, 301: b, 302: 1.0}
    monkeypatch.setattr(checklist, "_pgd_correct",     # per example: the first acc% of the n images right
                        lambda *args, **kw: torch.arange(n) < round(grid.get(args[9], pgd) * n / 100))
    accs = iter([90.0, b])                     # clean, FGSM
    monkeypatch.setattr(checklist, "accuracy_pct", lambda *args: next(accs))
    s = checklist.ChecklistSettings.smoke(eps=EPS, eps_grid=(EPS, 16 / 255, 0.3), n_examples=n)
    items = {it.key: it for it in checklist.run_checklist(model, data.x_test, data.y_test, s, square=False)}
    return {"audit": {r: found[r] == "flagged" for r in found},
            "reading": {"pgd-vs-fgsm": "M: PGD-20 leaves" in text, "eps-growth": "M: FGSM 0.02 leaves" in text},
            "checklist": {"pgd-vs-fgsm": items["iterative-vs-single-step"].passed is False,
                          "eps-growth": items["eps-growth"].passed is False}}


@pytest.mark.parametrize("a, b, pgd, flagged", [
    (40.0, 55.0, 70.0, True),      # +15 points each, 2 SE ≈ 9.6 on 200 images: beyond noise
    (40.0, 44.0, 48.0, False),     # +4 points each: the old 2-point rules flagged it, noise does not
])
def test_the_reading_the_audit_and_the_checklist_agree(monkeypatch, a, b, pgd, flagged):
    verdicts = _three_verdicts(monkeypatch, a, b, pgd)
    want = {"pgd-vs-fgsm": flagged, "eps-growth": flagged}
    assert verdicts == {"audit": want, "reading": want, "checklist": want}
