"""The CPU fast path is chosen by measuring it, never assumed; explicit switches and deterministic
runs keep what they ask for; an Apple-silicon GPU is picked by device=auto where there is one."""
import pytest
import torch

from dwf_lab.core import device
from dwf_lab.core.config import get_profile
from dwf_lab.training import fast_path
from dwf_lab.training.fast_path import PATHS, channels_last_ok, choose, training_runtime


def fake_probe(choice):
    def probe(width, batch, threads, steps=3):
        return {"images_per_s": {"fp32": 100.0, choice: 200.0}, "choice": choice, "width": width,
                "batch": batch, "threads": threads, "bf16_supported": True}
    return probe


def test_auto_on_a_cpu_takes_what_the_probe_measured(monkeypatch):
    monkeypatch.setattr(fast_path, "probe_cpu_paths", fake_probe("bf16+channels_last"))
    rt = training_runtime(get_profile("laptop", device="cpu"))
    assert rt.amp and rt.channels_last and rt.fast_path["choice"] == "bf16+channels_last"
    monkeypatch.setattr(fast_path, "probe_cpu_paths", fake_probe("fp32"))
    rt = training_runtime(get_profile("laptop", device="cpu"))
    assert not rt.amp and not rt.channels_last


def test_explicit_switches_and_deterministic_runs_are_not_probed(monkeypatch):
    monkeypatch.setattr(fast_path, "probe_cpu_paths", lambda *a, **k: pytest.fail("probed"))
    rt = training_runtime(get_profile("laptop", device="cpu", amp="off", channels_last="off"))
    assert (rt.amp, rt.channels_last, rt.fast_path) == (False, False, None)
    rt = training_runtime(get_profile("laptop", device="cpu", amp="bf16", channels_last="on"))
    assert rt.amp and rt.channels_last
    rt = training_runtime(get_profile("laptop", device="cpu", deterministic=True))
    assert (rt.amp, rt.channels_last) == (False, False)
    torch.use_deterministic_algorithms(False)


def test_one_explicit_switch_is_kept_while_the_other_follows_the_probe(monkeypatch):
    monkeypatch.setattr(fast_path, "probe_cpu_paths", fake_probe("bf16+channels_last"))
    rt = training_runtime(get_profile("laptop", device="cpu", channels_last="off"))
    assert rt.amp and not rt.channels_last


def test_a_path_must_beat_fp32_clearly_to_be_chosen():
    assert choose({"fp32": 100.0, "bf16": 103.0, "fp32+channels_last": 101.0}) == "fp32"
    assert choose({"fp32": 100.0, "bf16": 180.0, "bf16+channels_last": 150.0}) == "bf16"
    assert set(PATHS) == {"fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}


def test_the_probe_measures_every_path_this_cpu_can_run():
    fast_path.probe_cpu_paths.cache_clear()
    out = fast_path.probe_cpu_paths(0.0625, 16, torch.get_num_threads(), steps=1)
    expected = {name for name, (amp, cl) in PATHS.items()
                if (out["bf16_supported"] or not amp) and (channels_last_ok(0.0625) or not cl)}
    assert set(out["images_per_s"]) == expected and all(v > 0 for v in out["images_per_s"].values())
    assert out["choice"] in out["images_per_s"]


def test_auto_device_prefers_cuda_then_mps_then_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "mps_available", lambda: True)
    assert device.resolve_device("auto").type == "mps"
    monkeypatch.setattr(device, "mps_available", lambda: False)
    assert device.resolve_device("auto").type == "cpu"
    with pytest.raises(RuntimeError, match="no Apple-silicon GPU"):
        device.resolve_device("mps")


@pytest.mark.skipif(not device.mps_available(), reason="no Apple-silicon GPU (mps) on this machine")
def test_a_training_step_runs_on_mps():
    from dwf_lab.models import build_model
    model = build_model("resnet18", width=0.0625).to("mps")
    x, y = torch.rand(4, 3, 32, 32, device="mps"), torch.randint(0, 10, (4,), device="mps")
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_channels_last_is_not_tried_where_it_is_unsafe(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not channels_last_ok(0.0625) and channels_last_ok(0.125)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert channels_last_ok(0.0625)
