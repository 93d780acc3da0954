"""benchmarks/bench.py, the developer benchmark (a script, outside the package): its tiny run on a
CPU, the GPU peak table, the FLOP count and the paper projection by the course's cost model."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from dwf_lab import attacks
from dwf_lab.core.config import get_profile
from dwf_lab.course.cost import ATTACK_STEP
from dwf_lab.models.registry import build_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module       # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench", None)


def test_bench_tiny_runs_and_writes_its_json(bench, tmp_path):
    out = tmp_path / "b.json"
    bench.main(["--size", "tiny", "--device", "cpu", "--warmup", "0", "--steps", "1", "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["measured_on"] == "CPU" and r["device"]["type"] == "cpu"
    assert r["device"]["peak_bf16_dense_tflops"] is None and r["device"]["torch"] == torch.__version__
    for case in ("benign", "fgsm", "pgd", "mixture", "mixture_attack"):
        row = r["cases"][case]
        assert row["speedup"] > 0
        for impl in ("reference", "fast"):
            m = row[impl]
            assert m["images_per_s"] > 0 and m["tflops"] > 0
            assert m["fraction_of_peak"] is None and m["peak_memory_bytes"] is None
    assert {"fast_loop", "fast_vmap", "winner"} <= set(r["cases"]["mixture_attack"])
    pr = r["projection_paper_profile"]
    for impl in ("reference", "fast"):
        assert pr[impl]["hours_per_seed"] > pr[impl]["hours_per_seed_without_gate"] > 0
        assert {s["stage"] for s in pr[impl]["stages"]} >= {"benign", "pgd-4", "gate", "mixture"}
    # the analytic FLOP count at width 1 reproduces docs/paper-notes.md's cost floor
    fwd = bench.forward_flops(build_model("resnet18"))
    assert 1.05e9 < fwd < 1.2e9


def test_peak_table_lookup(bench, monkeypatch):
    assert bench.peak_bf16_tflops(torch.device("cpu")) == (None, None)
    names = {"NVIDIA H100 80GB HBM3": "H100 SXM", "NVIDIA H100 PCIe": "H100 PCIe",
             "NVIDIA H200": "H200", "NVIDIA A100-SXM4-80GB": "A100", "NVIDIA L4": None}
    for name, key in names.items():
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None, n=name: n)
        assert bench.peak_bf16_tflops(torch.device("cuda"))[0] == key


def test_step_flops_count_forward_passes(bench):
    """Forward = 1, forward+backward = 3, one attack step = 2 forward passes, from the cost model's passes."""
    p = get_profile("paper", pgd_steps_choices=(10,))
    fwd_e, fwd_m = 1.0, 10.0
    flops = {c: bench.step_flops(c, p, fwd_e, fwd_m, 1) for c in ("benign", "fgsm", "pgd", "mixture",
                                                                  "mixture_attack")}
    assert flops == pytest.approx({"benign": 3, "fgsm": 2 + 3, "pgd": 2 * 10 + 3,
                                   "mixture": (2 * (1 + 10) + 3 * 3) * fwd_m, "mixture_attack": 2 * fwd_m})


def test_paper_projection_adds_up(bench):
    t = {"benign": 1.0, "fgsm": 2.0, "pgd": 11.0, "mixture": 30.0, "mixture_attack": 2.0}
    pr = bench.project_paper(t, get_profile("paper", pgd_steps_choices=(10,)))
    per = {s["stage"]: s for s in pr["stages"]}
    assert per["benign"]["steps"] == 150 * 390
    assert per["benign"]["seconds_per_step"] == pytest.approx(1.0)
    # the measured PGD-10 step's seconds per pass, at the paper's mean of 30 steps
    assert per["pgd-1"]["seconds_per_step"] == pytest.approx(11.0 / (10 * ATTACK_STEP + 1) * (30 * ATTACK_STEP + 1))
    assert per["mixture"]["seconds_per_step"] == pytest.approx(
        30.0 / (11 * ATTACK_STEP + 3) * (31 * ATTACK_STEP + 3))
    assert per["gate"]["seconds_per_step"] < per["mixture"]["seconds_per_step"]   # experts forward-only
    total = sum(s["hours"] for s in pr["stages"])
    assert pr["hours_per_seed"] == pytest.approx(total)
    assert pr["hours_all_seeds"] == pytest.approx(5 * total)


def test_reference_attacks_are_the_kits_steps_on_the_plain_gradient(bench):
    torch.manual_seed(0)
    model = build_model("resnet18", width=0.0625).eval()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    assert torch.equal(bench._naive_fgsm(model, x, y, 0.03), attacks.fgsm(model, x, y, 0.03))
    x_adv = bench._naive_pgd(model, x, y, 8 / 255, 2 / 255, 3)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
