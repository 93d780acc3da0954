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
import socket
import sys
import tarfile
import urllib.request
from pathlib import Path

import pytest

from dwf_lab.__main__ import main
from dwf_lab.core.config import get_profile
from dwf_lab.data import DATA_DIR_ENV, SUBSET_ENV, load_dataset
from dwf_lab.evaluation.model_checks import NOT_VALID, output_problems
from dwf_lab.evaluation.protocol import EvalSettings, evaluate_and_write
from dwf_lab.reporting.render import write_report
from dwf_lab.store.archive import pack_run
from dwf_lab.store.runs import RUNS_DIR_ENV, Run

HERE = Path(__file__).resolve().parent
FACTORIES = HERE / "pipeline" / "external_factories.py"
SMOKE = ["--profile", "smoke", "--quiet"]
sys.path.insert(0, str(HERE / "pipeline"))


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """An empty runs folder, no dataset settings, no network."""
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv(RUNS_DIR_ENV, str(root))
    monkeypatch.delenv(SUBSET_ENV, raising=False)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)

    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return root


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


@pytest.mark.parametrize("make, message", [
    (_header_damaged, r"{a} is damaged \(an unreadable tar entry header at byte \d+ of the tar stream\); nothing "
                      r"was installed\. Fetch or copy the archive again"),
    (_sixteen_bytes, r"{a} is damaged \((BadGzipFile|error|EOFError): .*\); nothing was installed"),
    (_truncated, r"{a} is damaged \(EOFError: Compressed file ended before the end-of-stream marker was reached\)"),
    (_deep_manifest, r"{a} is damaged \(its manifest.json is unreadable: RecursionError: maximum recursion depth"),
    (_run_as_a_list, r"{a} is damaged \(its manifest.json names the run \['a', 'b'\], not a folder name\)"),
    (_a_and_a_slash_b, r"{a}: the archive holds 'eval' as a file and also 'eval/b.json' inside it; refused, "
                       r"nothing was installed"),
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
