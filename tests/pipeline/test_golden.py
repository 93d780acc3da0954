"""The smoke pipeline, run deterministically on a CPU, writes the same evaluation results as the
kit did before its layout moved into layered packages (tests/fixtures/golden_smoke, recorded from
the flat modules at b92f35b): every metric and every per-example bit of every model.

A refactoring that changes a number here changed behaviour. To record the fixture again on purpose
(after a deliberate change of results): ``python tests/pipeline/test_golden.py --write``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from dwf_lab.core.config import get_profile
from dwf_lab.pipeline.run_all import run_all
from dwf_lab.store.runs import RUNS_DIR_ENV

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "golden_smoke"
KEYS = ("model", "row", "seed", "dataset", "n_test", "metrics", "per_example")


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
    here = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if any(meta[k] != v for k, v in here.items()):
        pytest.skip(f"the fixture was recorded with {({k: meta[k] for k in here})}, this machine has "
                    f"{here}: other kernels give other bits")
    torch.set_num_threads(1)
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
    meta.update(torch=torch.__version__, cpu_capability=torch.backends.cpu.get_cpu_capability())
    for name, rec in results.items():
        (FIXTURE / name).write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
    (FIXTURE / "_meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {len(results)} results to {FIXTURE}")
