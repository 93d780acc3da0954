"""The smoke pipeline, run deterministically on a CPU, writes the same evaluation results as the
kit did before its layout moved into layered packages (tests/fixtures/golden_smoke, recorded from
the flat modules at b92f35b): every metric and every per-example bit of every model.

A refactoring that changes a number here changed behaviour. To record the fixture again on purpose
(after a deliberate change of results): ``python tests/pipeline/test_golden.py --write``.

Bits depend on the CPU's kernels, not only on torch's version and ISA level: oneDNN and MKL pick
other fp32 convolution and GEMM code on other chips (an Intel CPU with AMX against the AMD EPYC the
fixture was recorded on), and a few epochs of training turn a last-bit difference into points of
accuracy. So the fixture keeps a fingerprint of the kernels (:func:`kernel_fingerprint`: the bits
of one forward and backward pass of a smoke-sized ResNet-18), and a machine whose fingerprint
differs skips the comparison, saying so, instead of failing on arithmetic it does not share.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from dwf_lab.core.config import get_profile
from dwf_lab.models.resnet import resnet18
from dwf_lab.pipeline.run_all import run_all
from dwf_lab.store.runs import RUNS_DIR_ENV

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "golden_smoke"
KEYS = ("model", "row", "seed", "dataset", "n_test", "metrics", "per_example")


def kernel_fingerprint() -> str:
    """sha256 of the fp32 bits of one forward and backward pass (convolutions, batch norm, the
    linear layer) of the smoke profile's ResNet-18 on fixed inputs, on one thread."""
    torch.manual_seed(0)
    model = resnet18(width=0.0625).train()
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(16) % 10
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    h = hashlib.sha256(loss.detach().numpy().tobytes())
    for prm in model.parameters():
        h.update(prm.grad.numpy().tobytes())
    return h.hexdigest()[:16]


def golden_run(runs_dir: Path) -> tuple[dict[str, dict], dict]:
    meta = json.loads((FIXTURE / "_meta.json").read_text())
    p = get_profile(meta["profile"], **meta["overrides"])
    old = os.environ.get(RUNS_DIR_ENV)
    os.environ[RUNS_DIR_ENV] = str(runs_dir)
    try:
        run = run_all(p, "golden", progress=False)
    finally:
        os.environ.pop(RUNS_DIR_ENV) if old is None else os.environ.__setitem__(RUNS_DIR_ENV, old)
    out = {}
    for f in sorted(run.eval_dir.glob("*.json")):
        rec = json.loads(f.read_text())
        out[f.name] = {k: rec[k] for k in KEYS}
    return out, meta


@pytest.mark.slow
def test_smoke_pipeline_writes_the_recorded_results(tmp_path):
    meta = json.loads((FIXTURE / "_meta.json").read_text())
    torch.set_num_threads(1)
    here = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "kernel_fingerprint": kernel_fingerprint()}
    if any(meta.get(k) != v for k, v in here.items()):
        pytest.skip(f"the fixture was recorded with {({k: meta.get(k) for k in here})}, this machine has "
                    f"{here}: other kernels give other bits")
    got, _ = golden_run(tmp_path)
    want = {f.name: json.loads(f.read_text()) for f in sorted(FIXTURE.glob("*_seed*.json"))}
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name]["metrics"] == want[name]["metrics"], name
        assert got[name]["per_example"] == want[name]["per_example"], name
        assert {k: got[name][k] for k in KEYS} == want[name], name


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile
    torch.set_num_threads(1)
    results, meta = golden_run(Path(tempfile.mkdtemp()))
    meta.update(torch=torch.__version__, cpu_capability=torch.backends.cpu.get_cpu_capability(),
                kernel_fingerprint=kernel_fingerprint())
    for name, rec in results.items():
        (FIXTURE / name).write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
    (FIXTURE / "_meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {len(results)} results to {FIXTURE}")
