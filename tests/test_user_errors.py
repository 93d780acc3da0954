"""Issue #30, the last 42 mistakes: each one ONE line ``dwf-lab: error: ...``, exit code 2 and nothing
written or changed (the folder tree compared before and after), a model that outputs probabilities never
reported as robust, and a damaged archive always named as damaged. Each case is one row of a table: its
command (or API call) and the line it must give."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import re
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from tinymodels import lock_holder  # tests/ is on sys.path

from dwf_lab.__main__ import main
from dwf_lab.attacks.pgd import pgd
from dwf_lab.core.config import get_profile
from dwf_lab.data import DATA_DIR_ENV, SUBSET_ENV, load_dataset
from dwf_lab.evaluation.model_checks import NOT_VALID, output_problems
from dwf_lab.evaluation.protocol import EvalSettings, evaluate_and_write
from dwf_lab.models.registry import build_model
from dwf_lab.reporting.render import write_report
from dwf_lab.store.archive import pack_run
from dwf_lab.store.checkpoints import save_model
from dwf_lab.store.runs import RUNS_DIR_ENV, Run

HERE = Path(__file__).resolve().parent
FACTORIES = HERE / "pipeline" / "external_factories.py"
sys.path.insert(0, str(HERE / "pipeline"))
SMOKE = ["--profile", "smoke", "--quiet"]   # (runs: the offline runs-folder fixture of tests/conftest.py)


def tree(root: Path) -> dict[str, bytes]:
    """Every path under ``root`` with its bytes (folders as <dir>, links as where they point)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = (b"<link " + str(p.readlink()).encode() + b">" if p.is_symlink()
                    else p.read_bytes() if p.is_file() else b"<dir>")
    return out


def one_error(capsys, args: list[str]) -> str:
    """Run the command in-process: exit 2 and exactly one line ``dwf-lab: error: ...``; returns its text."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dwf-lab: error: ") and "Traceback" not in err, err
    return lines[0].removeprefix("dwf-lab: error: ")


# ------------------------------------------------- 1. probabilities, saturation --
def test_a_softmax_output_network_is_refused_before_any_number(runs, capsys):
    before = tree(runs)
    line = one_error(capsys, ["evaluate", "--model", f"{FACTORIES}:softmax_tiny", *SMOKE])
    assert line.startswith(f"--model {FACTORIES}:softmax_tiny: {NOT_VALID}: its outputs are probabilities")
    assert "return the logits (drop the final softmax)" in line
    assert tree(runs) == before


def test_the_same_network_returning_logits_passes_the_checks_and_a_saturated_one_is_flagged(tmp_path, capsys):
    import external_factories as f
    data = load_dataset("synthetic", n_train=64, n_test=32)
    assert output_problems(f.logits_tiny(), data.x_test, data.y_test) == []
    [why] = output_problems(f.softmax_tiny(), data.x_test, data.y_test)
    assert why.startswith("its outputs are probabilities")
    [why] = output_problems(f.saturated_tiny(), data.x_test, data.y_test)
    assert "gradient is exactly zero" in why

    # the kit's own evaluation: flagged on stderr before the attacks, in the record, the rows and the headline
    s = EvalSettings(fgsm_eps=(0.03,), pgd_steps=(1,), long=False, batch_size=32)
    capsys.readouterr()
    for name, model in (("hot", f.saturated_tiny()), ("fine", f.logits_tiny())):
        evaluate_and_write(model, data.x_test[:16], data.y_test[:16], s, tmp_path / "eval" / f"{name}_seed0.json",
                           name=name, row=name, seed=0, dataset="synthetic", progress=False)
    err = capsys.readouterr().err
    assert err.count(f"dwf-lab: warning: hot: {NOT_VALID}: the cross-entropy's gradient is exactly zero") == 1
    assert "fine" not in err
    rec = json.loads((tmp_path / "eval" / "hot_seed0.json").read_text())
    assert rec["validity"]["valid"] is False
    assert "validity" not in json.loads((tmp_path / "eval" / "fine_seed0.json").read_text())
    report = write_report(tmp_path / "eval", tmp_path / "report", png=False)
    md = report["report.md"].read_text()
    assert md.splitlines()[2].startswith("- NOT A VALID EVALUATION -- hot: the cross-entropy's gradient")
    assert f"| **hot ({NOT_VALID})** |" in md and "| **fine** |" in md
    assert f"hot ({NOT_VALID})" in report["report.html"].read_text()


# ------------------------------------------------------------------ 2. archives --
def small_run(root: Path) -> Path:
    """A small run folder (settings, a log, a results file, a model-sized blob) without training."""
    Run("tiny", get_profile("smoke"), root=root)
    (root / "seed-0" / "models").mkdir(parents=True)
    (root / "seed-0" / "metrics.jsonl").write_text("".join(
        json.dumps({"event": "epoch", "epoch": i, "train_loss": 1 / (i + 1)}) + "\n" for i in range(200)))
    (root / "seed-0" / "models" / "blob.bin").write_bytes(
        bytes((i * 7919 + i // 13) % 251 for i in range(20000)))
    return root


@pytest.fixture
def packed(tmp_path) -> Path:
    return pack_run(small_run(tmp_path / "made" / "tiny"), tmp_path / "tiny.tar.gz")["path"]


def craft(path: Path, entries: list[tuple[str, bytes | None]], manifest: dict | bytes | None = None,
          base: Path | None = None) -> Path:
    """An archive of ``entries`` (name under the top folder 'tiny', bytes or None for a folder); its
    manifest lists every file unless given (``base``: an archive whose entries come first)."""
    files: list[tuple[str, bytes | None]] = []
    if base is not None:
        with tarfile.open(base) as t:
            files = [(m.name.split("/", 1)[1], t.extractfile(m).read()) for m in t.getmembers()
                     if m.isfile() and m.name != "tiny/manifest.json"]
    files += entries
    if manifest is None:
        manifest = {"format": "dwf-lab-run-archive", "version": 1, "run": "tiny", "files": {
            n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for n, b in files if b is not None}}
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [("manifest.json", body), *files]:
            info = tarfile.TarInfo(f"tiny/{name}")
            info.type = tarfile.REGTYPE if data is not None else tarfile.DIRTYPE
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_the_one_bit_flip_hunt_80_flips_each_damaged_or_a_valid_unpack(packed, runs, capsys):
    """Every single-bit flip of a packed run is refused with one line "<archive> is damaged (...)", or,
    where the bit carried nothing the data depends on (the gzip header's time stamp, its OS byte), the
    run installs with every file verified against the manifest. Nothing else, never a traceback."""
    raw = packed.read_bytes()
    rng = random.Random(30)
    outcome = {"damaged": 0, "valid": 0}
    for i in range(80):
        bit = rng.randrange(len(raw) * 8)
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        path = packed.with_name(f"flip-{i}.tar.gz")
        path.write_bytes(bytes(flipped))
        before = tree(runs)
        capsys.readouterr()
        rc = main(["unpack", str(path), "--name", f"flip-{i}"])
        out = capsys.readouterr()
        if rc == 0:
            outcome["valid"] += 1
            assert (runs / f"flip-{i}" / "seed-0" / "models" / "blob.bin").read_bytes() == \
                (packed.parent / "made" / "tiny" / "seed-0" / "models" / "blob.bin").read_bytes()
            continue
        lines = out.err.splitlines()
        assert rc == 2 and len(lines) == 1, (bit, out.err)
        assert lines[0].startswith(f"dwf-lab: error: {path} is ") and "damaged" in lines[0], (bit, lines)
        assert tree(runs) == before, bit
        outcome["damaged"] += 1
    print(f"one-bit-flip hunt over {len(raw)} bytes: {outcome}")
    assert sum(outcome.values()) == 80 and outcome["damaged"] >= 70


def _header_damaged(packed: Path, tmp: Path) -> Path:
    """A gzip-sound archive whose tar has one entry header with a wrong checksum in the middle."""
    with gzip.open(packed) as g:
        tar = bytearray(g.read())
    with tarfile.open(packed) as t:
        second = t.getmembers()[2].offset
    tar[second + 148:second + 156] = b"0000000\0"    # the header's checksum field
    out = tmp / "header.tar.gz"
    out.write_bytes(gzip.compress(bytes(tar)))
    return out


def _sixteen_bytes(packed: Path, tmp: Path) -> Path:
    raw = bytearray(packed.read_bytes())
    at = len(raw) // 3
    raw[at:at + 16] = bytes(16)
    out = tmp / "sixteen.tar.gz"
    out.write_bytes(bytes(raw))
    return out


def _truncated(packed: Path, tmp: Path) -> Path:
    out = tmp / "cut.tar.gz"
    out.write_bytes(packed.read_bytes()[:-100])
    return out


def _deep_manifest(packed: Path, tmp: Path) -> Path:
    return craft(tmp / "deep.tar.gz", [], b"[" * 100_000 + b"]" * 100_000, base=packed)


def _run_as_a_list(packed: Path, tmp: Path) -> Path:
    path = craft(tmp / "listrun.tar.gz", [], None, base=packed)
    with tarfile.open(path) as t:
        m = json.loads(t.extractfile("tiny/manifest.json").read())
    m["run"] = ["a", "b"]
    return craft(tmp / "listrun.tar.gz", [], m, base=packed)


def _a_and_a_slash_b(packed: Path, tmp: Path) -> Path:
    return craft(tmp / "clash.tar.gz", [("eval", b"x"), ("eval/b.json", b"{}")], base=packed)


def _a_file_where_the_run_has_a_folder(packed: Path, tmp: Path) -> Path:
    return craft(tmp / "clash2.tar.gz", [("seed-0", b"x")], base=packed)


@pytest.mark.parametrize("make, message", [
    (_header_damaged, r"{a} is damaged \(an unreadable tar entry header at byte \d+ of the tar stream\); nothing "
                      r"was installed\. Fetch or copy the archive again"),
    (_sixteen_bytes, r"{a} is damaged \((BadGzipFile|error|EOFError): .*\); nothing was installed"),
    (_truncated, r"{a} is damaged \(EOFError: Compressed file ended before the end-of-stream marker was reached\)"),
    (_deep_manifest, r"{a} is damaged \(its manifest.json is unreadable: RecursionError: maximum recursion depth"),
    (_run_as_a_list, r"{a} is damaged \(its manifest.json names the run \['a', 'b'\], not a folder name\)"),
    (_a_and_a_slash_b, r"{a}: the archive holds 'eval' as a file and also 'eval/b.json' inside it; refused, "
                       r"nothing was installed"),
    (_a_file_where_the_run_has_a_folder, r"{a}: the archive holds 'seed-0' as a file and also "
                                         r"'seed-0/metrics.jsonl' inside it; refused, nothing was installed"),
])
def test_a_damaged_or_clashing_archive_is_one_line_naming_it(packed, runs, tmp_path, capsys, make, message):
    bad = make(packed, tmp_path)
    before = tree(runs)
    line = one_error(capsys, ["unpack", str(bad)])
    assert re.fullmatch(message.format(a=re.escape(str(bad))) + ".*", line), line
    assert tree(runs) == before


def test_a_refused_unpack_into_a_new_nested_runs_folder_leaves_no_folders(packed, tmp_path, monkeypatch, capsys):
    nested = tmp_path / "new" / "deeper" / "runs"
    monkeypatch.setenv(RUNS_DIR_ENV, str(nested))
    one_error(capsys, ["unpack", str(_truncated(packed, tmp_path))])
    assert not (tmp_path / "new").exists()


def test_nothing_of_a_run_is_read_through_a_link_and_a_refused_pack_changes_nothing(runs, tmp_path, capsys,
                                                                                    monkeypatch):
    root = small_run(runs / "tiny")
    (root / "eval").mkdir()
    (root / "eval" / "passwd.json").symlink_to("/etc/passwd")
    read = []
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **kw: read.append(str(self)) or real(self, *a, **kw))
    before = tree(runs)
    line = one_error(capsys, ["pack", "tiny", "--out", str(tmp_path)])
    assert line.startswith(f"{root / 'eval' / 'passwd.json'} is a link or not a plain file")
    assert not [p for p in read if "passwd" in p] and tree(runs) == before
    one_error(capsys, ["report", "--run", "tiny"])       # the report refuses it too, before reading it
    assert not [p for p in read if "passwd" in p]
    (root / "eval" / "passwd.json").unlink()
    before = tree(runs)
    line = one_error(capsys, ["pack", "tiny", "--out", str(root / "seed-0")])
    assert line == f"{root / 'seed-0' / 'tiny.tar.gz'} is inside the run it packs; write the archive elsewhere (--out PATH)"
    assert tree(runs) == before


# ------------------------------------------------- 3-5. settings, runs, data, models --
def _subset(path: Path, n: int = 40, labels=None, blank: bool = False) -> Path:
    rng = np.random.default_rng(0)
    x = np.zeros((n, 32, 32, 3), np.uint8) if blank else rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=(np.arange(n) % 10 if labels is None else labels).astype(np.uint8),
             x_test=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), y_test=(np.arange(20) % 10).astype(np.uint8))
    return path


def _no_config_but_models(runs: Path, tmp: Path, mp) -> None:
    (runs / "smoke" / "seed-0" / "models").mkdir(parents=True)
    (runs / "smoke" / "seed-0" / "models" / "benign.safetensors").write_bytes(b"a width-0.0625 model")


def _generated_data_run(runs: Path, tmp: Path, mp) -> None:
    """A run trained while its dataset could not be loaded (the kit fell back to generated data)."""
    p = get_profile("smoke", dataset="cifar10", n_train=40, n_test=20, expert_batch=8)
    run = Run("lap", p)
    model = build_model("resnet18", width=0.0625, dataset="synthetic")
    save_model(run.model_path(0, "benign"), model, {"stage": "benign", "dataset": "synthetic",
                                                    "training": p.to_dict(), "finished": True})
    _real_subset(runs, tmp, mp)


def _real_subset(runs: Path, tmp: Path, mp) -> None:
    mp.setenv(SUBSET_ENV, str(_subset(tmp / "subset.npz")))
    mp.setenv(DATA_DIR_ENV, str(tmp / "empty"))
    (tmp / "empty").mkdir(exist_ok=True)


def _one_class(runs: Path, tmp: Path, mp) -> None:
    mp.setenv(SUBSET_ENV, str(_subset(tmp / "one.npz", labels=np.full(40, 3))))


def _blank(runs: Path, tmp: Path, mp) -> None:
    mp.setenv(SUBSET_ENV, str(_subset(tmp / "blank.npz", blank=True)))


def _stored(**change):
    """A run 'r' whose config.json holds settings this dwf-lab cannot use (checksum and digest made to match)."""
    def setup(runs: Path, tmp: Path, mp) -> None:
        cfg = made_config(runs, "r")
        c = json.loads(cfg.read_text())
        c["profile"].update(change)
        c["profile"].pop("drop", None)
        cfg.write_text(json.dumps(c))
    return setup


def made_config(runs: Path, name: str) -> Path:
    Run(name, get_profile("smoke"))
    return runs / name / "config.json"


def _factory_file(text: str):
    def setup(runs: Path, tmp: Path, mp) -> None:
        (tmp / "mymodel.py").write_text(text)
    return setup


SUBSET = SUBSET_ENV
T = ["train", *SMOKE]
CASES = [   # (command, the one line it must give (a regex after the literal text up to the first '~'), setup)
    # settings given twice, or in two ways
    (T + ["--set", "width=0.5", "--set", "width=0.25"],
     "width is set twice (--set width=0.5 and --set width=0.25); give each setting once", None),
    (T + ["--set", "seeds=0", "--seeds", "1"],
     "the seeds are given twice (--set seeds=0 and --seeds 1); give them once", None),
    # empty items, other scripts' digits, spaces
    (T + ["--set", "eval_fgsm_eps=0.01,,0.02"],
     "invalid profile: eval_fgsm_eps must be a comma-separated list of numbers (or fractions like 8/255), got "
     "'0.01,,0.02' (an empty item: separate the values by single commas)", None),
    (T + ["--set", "width=\u0660.\u0665"],
     "invalid profile: width must be a number (or a fraction like 8/255), got '\u0660.\u0665'", None),
    (T + ["--set", "seeds=\u0661"], "invalid profile: seeds must be a comma-separated list of whole numbers, got "
                                    "'\u0661'", None),
    (T + ["--set", "device= cpu"], "--set 'device= cpu' has spaces around its value; write it as device=cpu", None),
    # absurd values
    (T + ["--set", "width=0.0001"], "invalid profile: width must be >= 1/64 = 0.015625 (below it the ResNet's first "
                                    "stage would have less than one of its 64 channels), got 0.0001", None),
    (T + ["--set", "seeds=-1"], "invalid profile: every value of seeds must be >= 0 and < 2**32, got (-1,)", None),
    (T + ["--set", "compile=yes"], "invalid profile: compile must be true or false, got 'yes'", None),
    (T + ["--set", "n_fgsm_experts=0", "--set", "n_pgd_experts=0"],
     "n_fgsm_experts and n_pgd_experts are both 0: the mixture would route between the benign expert alone; set "
     "at least one of them to 1 or more", None),
    # checked before the run folder is made: the data holds a batch, the models fit, the device exists
    (T + ["--set", "n_train=1"], "stage benign: the 1 training images are fewer than one batch of 64 (expert_batch); "
                                 "raise n_train (--set n_train=...) or lower expert_batch", None),
    (T + ["--set", "n_train=10"], "stage benign: the 10 training images are fewer than one batch of 64 "
                                  "(expert_batch); raise n_train (--set n_train=...) or lower expert_batch", None),
    (T + ["--set", "width=64"], "the models do not fit in memory at width 64: stage mixture needs at least ~", None),
    (T + ["--set", "device=cuda:7"], "device 'cuda:7~", None),
    # runs
    (T + ["--set", "width=0.125"], "run 'smoke': {runs}/smoke holds a run's files (seed-0/models/benign.safetensors) "
     "but no config.json, so the settings they were made with are unknown. Nothing was changed: restore its "
     "config.json, or use another run name (--run NAME), or delete that folder to start it over.",
     _no_config_but_models),
    (["train", "--profile", "smoke", "--quiet", "--run", "lap", "--set", "dataset=cifar10", "--set", "n_train=40",
      "--set", "n_test=20", "--set", "expert_batch=8"],
     "the run at {runs}/lap was trained on generated data (seed-0/models/benign.safetensors says synthetic: its "
     "dataset could not be loaded then), and this command has the real cifar10-subset. Its models say nothing about "
     "cifar10-subset: start the run over (delete the folder, or use another --run NAME)", _generated_data_run),
    (["evaluate", "--run", "r", "--quiet"], "run 'r': {runs}/r/config.json holds settings this dwf-lab cannot use "
     "(invalid profile: width must be a number (or a fraction like 8/255), got 'abc'); restore the file, or delete "
     "the run folder to start it over", _stored(width="abc")),
    (["evaluate", "--run", "r", "--quiet"], "run 'r': {runs}/r/config.json holds settings this dwf-lab cannot use "
     "(unknown setting 'evil'; ~", _stored(evil=1)),
    (["evaluate", "--run", "r", "--quiet"], "run 'r': {runs}/r/config.json holds settings this dwf-lab cannot use "
     "(unknown profile 'paper2'; choose one of ['laptop', 'paper', 'smoke']); restore the file, or delete the run "
     "folder to start it over", _stored(name="paper2")),
    # data
    (T + ["--set", "dataset=cifar10", "--set", "n_train=100", "--set", "n_test=20"],
     f"the subset {{tmp}}/subset.npz ({SUBSET}) holds only 40 train / 20 test images, fewer than the 100 / 20 asked for: "
     "lower n_train / n_test (--set n_train=...), or use a bigger subset (the full CIFAR-10 is not here either: ~",
     _real_subset),
    (T + ["--set", "dataset=cifar10-subset", "--set", "n_train=40", "--set", "expert_batch=8"],
     "{tmp}/one.npz (y_train): all 40 training labels are class 3: a classifier needs images of several classes; "
     "check how the file was made", _one_class),
    (T + ["--set", "dataset=cifar10-subset", "--set", "n_train=40", "--set", "expert_batch=8"],
     "{tmp}/blank.npz (x_train): every pixel of its 40 images is 0 (blank images): nothing can be learnt from them; "
     "check how the file was made", _blank),
    # a model from elsewhere
    (["evaluate", "--model", "dwf_lab.models.examples:torchvision_resnet18", "--n-test", "16", "--set", "n_test=8",
      *SMOKE], "n_test is given twice (--n-test 16 and --set n_test=...); give it once", None),
    (["evaluate", "--model", "{tmp}/mymodel.py:make", *SMOKE],
     "--model {tmp}/mymodel.py:make: make() called sys.exit(3): a model's module and factory must return a model, "
     "not end the program (put command-line parsing under if __name__ == '__main__':)",
     _factory_file("import sys\ndef make():\n    sys.exit(3)\n")),
    (["evaluate", "--model", "{tmp}/mymodel.py:make", *SMOKE],
     "--model {tmp}/mymodel.py:make: importing {tmp}/mymodel.py called sys.exit(2); it printed '~",
     _factory_file("import argparse\nap = argparse.ArgumentParser()\nap.add_argument('--data', required=True)\n"
                   "args = ap.parse_args()\ndef make():\n    pass\n")),
]


@pytest.mark.parametrize("command, message, setup", CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_each_mistake_is_one_line_exit_2_and_nothing_written(runs, tmp_path, monkeypatch, capsys, command,
                                                             message, setup):
    if "device=cuda:7" in command and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    if setup is not None:
        setup(runs, tmp_path, monkeypatch)
    fill = {"runs": runs, "tmp": tmp_path}
    command = [w.format(**fill) for w in command]
    before = tree(runs)
    line = one_error(capsys, command)
    literal, _, pattern = message.format(**fill).partition("~")
    assert line.startswith(literal) and re.fullmatch(re.escape(literal) + (".*" if _ else ""), line), line
    assert tree(runs) == before


def test_a_diverged_run_is_one_line_and_a_corrected_setting_starts_it_over(runs, capsys):
    for _ in range(2):   # the same again: the same line, no traceback
        line = one_error(capsys, [*T, "--stage", "benign", "--set", "lr=1e6"])
        assert line == ("training diverged: the loss became NaN or infinite in stage 'benign' at epoch 1 (step 4 of 4) "
                        "with lr=1e+06. Lower the learning rate: no stage of this run has finished, so the same "
                        "command with a lower lr (--set lr=...) starts it over")
    capsys.readouterr()
    assert main([*T, "--stage", "benign", "--set", "lr=0.01"]) == 0
    assert "starts over with the new settings (lr: 1000000.0 -> 0.01)" in capsys.readouterr().err
    assert (runs / "smoke" / "seed-0" / "models" / "benign.safetensors").exists()
    assert json.loads((runs / "smoke" / "config.json").read_text())["profile"]["lr"] == 0.01
    # once a stage has finished, other settings are refused again
    line = one_error(capsys, [*T, "--stage", "benign", "--set", "lr=0.02"])
    assert "was made with other settings (lr: 0.01 -> 0.02)" in line


def test_a_second_command_on_a_held_run_changes_nothing(runs, capsys):
    made_config(runs, "smoke")
    holder = lock_holder(runs / "smoke", "smoke")
    try:
        before = tree(runs)
        line = one_error(capsys, ["baselines", *SMOKE, "--seeds", "0,1"])
        assert line.startswith(f"run 'smoke' at {runs / 'smoke'} is in use by another process ('train', pid {holder.pid}")
        assert tree(runs) == before     # config.json's seeds untouched
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("call, message", [
    (lambda m, x, y: pgd(m, x, y, steps=2.5), "steps must be a whole number, got 2.5"),
    (lambda m, x, y: pgd(m, x, y, restarts=True), "restarts must be a whole number, got True"),
    (lambda m, x, y: pgd(m, x.permute(0, 2, 3, 1), y),
     "this resnet18 model takes (N, C, H, W) batches of 3-channel images, got shape (4, 32, 32, 3): the images look "
     "channels-last (N, H, W, C); pass x.permute(0, 3, 1, 2)"),
])
def test_api_mistakes_are_one_clear_error(call, message):
    model = build_model("resnet18", width=0.0625, dataset="synthetic").eval()
    x, y = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError) as err:
        call(model, x, y)
    assert str(err.value) == message


def test_evaluating_into_a_folder_another_process_holds_changes_nothing(runs, tmp_path, capsys):
    out = runs / "external" / "tiny"
    Run("tiny", get_profile("smoke"), root=out)
    ckpt = tmp_path / "tiny.safetensors"
    save_model(ckpt, build_model("resnet18", width=0.0625, dataset="synthetic"))
    holder = lock_holder(out, "tiny")
    try:
        before = tree(runs)
        line = one_error(capsys, ["evaluate", "--checkpoint", str(ckpt), *SMOKE, "--set", "seeds=0,1"])
        assert line.startswith(f"run 'tiny' at {out} is in use by another process ('train', pid {holder.pid}")
        assert tree(runs) == before
    finally:
        holder.kill()
        holder.wait()
