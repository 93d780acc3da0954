"""pack / unpack: a run handed on as one archive, verified file by file, installed atomically, and
then loaded instead of trained. Everything offline: local files, file:// URLs and a localhost server."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import shutil
import tarfile
import threading
from pathlib import Path

import pytest

from dwf_lab.__main__ import main
from dwf_lab.core.config import get_profile, parse_sets
from dwf_lab.pipeline.reproduce import evaluate_run, train_run
from dwf_lab.pipeline.run_all import report_run
from dwf_lab.store import archive as archive_module
from dwf_lab.store.archive import (
    MANIFEST,
    MAX_BYTES_ENV,
    ArchiveError,
    files_to_pack,
    pack_run,
    run_command,
    unpack_archive,
)
from dwf_lab.store.runs import RUNS_DIR_ENV, Run
from dwf_lab.training.builders import load_data
from dwf_lab.training.stages import plan_stages


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """A finished smoke run (every stage trained on 64 images, two evaluated, report written), and its data."""
    root = tmp_path_factory.mktemp("made") / "smoke"
    p = get_profile("smoke", n_train=64)
    run = Run("smoke", p, root=root)
    data = load_data(p)
    train_run(run, 0, data, progress=False)
    evaluate_run(run, 0, data, "benign,mixture", progress=False)
    report_run(run, data.name, data)
    return run, data


@pytest.fixture(scope="module")
def archive(smoke, tmp_path_factory) -> Path:
    run, _ = smoke
    extra = run.ckpt_dir(0, "ghost")               # a stage that never finished: partial checkpoints
    extra.mkdir(parents=True)
    (extra / "epoch-001.safetensors").write_bytes(b"partial")
    (run.root / ".lock").write_text("")            # a lock file left behind
    return pack_run(run.root, tmp_path_factory.mktemp("out"))["path"]


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "runs"
    monkeypatch.setenv(RUNS_DIR_ENV, str(root))
    return root


def manifest_of(path: Path) -> dict:
    with tarfile.open(path) as tar:
        return json.loads(tar.extractfile(f"smoke/{MANIFEST}").read())


# ------------------------------------------------------------------ pack --
def test_the_archive_holds_the_run_and_a_manifest_of_sha256s(smoke, archive):
    run, _ = smoke
    files = manifest_of(archive)["files"]
    for rel in ["config.json", "seed-0/metrics.jsonl", "eval/mixture_seed0.json", "report/report.md",
                "report/entries.json", "report/entries/mixture_seed0.json", "report/model_cards/mixture_seed0.md",
                "report/test_set.json", *[f"seed-0/models/{s.name}.safetensors" for s in plan_stages(run.profile)],
                "seed-0/checkpoints/mixture/epoch-001.safetensors"]:
        assert rel in files, rel
        assert files[rel]["sha256"] == sha(run.root / rel) and files[rel]["bytes"] == (run.root / rel).stat().st_size
    assert not [f for f in files if f.endswith("state.safetensors") or "/ghost/" in f or "/." in f or
                f.startswith(".")], "resume state, partial checkpoints and lock files are not packed"
    m = manifest_of(archive)
    assert m["dwf_lab"] and "torch" in m["versions"] and m["finished"]["seed-0"]
    assert m["command"] == "python -m dwf_lab run --profile smoke --run smoke --set n_train=64"


def test_pack_refuses_a_link_in_the_run(tmp_path):
    run = Run("linked", get_profile("smoke"), root=tmp_path / "linked")
    (run.root / "eval").mkdir()
    (run.root / "eval" / "x.json").symlink_to("/etc/hostname")
    with pytest.raises(ArchiveError, match="is a link"):
        files_to_pack(run.root)


def test_run_command_reproduces_the_settings():
    p = get_profile("smoke", width=0.125, seeds="0,1", pgd_eps="4/255", device="cpu")
    words = run_command(p.to_dict(), "mine").split()
    assert words[:8] == ["python", "-m", "dwf_lab", "run", "--profile", "smoke", "--run", "mine"]
    sets = [w for i, w in enumerate(words) if i and words[i - 1] == "--set"]
    assert not any(s.startswith("device=") for s in sets), "speed switches are left to the machine"
    again = get_profile("smoke", **parse_sets(sets))
    assert again.digest() == p.digest() and again.seeds == (0, 1)


# ---------------------------------------------------------------- unpack --
def test_unpack_installs_a_run_that_loads_instead_of_training(smoke, archive, runs):
    done = unpack_archive(archive, name="class")
    root = runs / "class"
    assert done["installed"] and done["root"] == root and done["files"] == len(manifest_of(archive)["files"])
    assert not [p for p in runs.iterdir() if p.name.startswith(".")], "no temporary folder left"
    p = get_profile("smoke", n_train=64)
    run = Run("class", p)               # the copied config.json is accepted as this run's own
    assert all(run.is_done(0, s.name) for s in plan_stages(p))
    before = {f: f.stat().st_mtime_ns for f in root.rglob("*") if f.is_file()}
    log = (root / "seed-0" / "metrics.jsonl").read_text()
    data = load_data(p)
    train_run(run, 0, data, progress=False)                       # trains nothing
    results = evaluate_run(run, 0, data, "benign,mixture", progress=False)   # recomputes nothing
    assert (root / "seed-0" / "metrics.jsonl").read_text() == log
    assert {f: f.stat().st_mtime_ns for f in before} == before
    assert [r["model"] for r in results] == ["benign", "mixture"]
    assert json.loads((root / MANIFEST).read_text())["run"] == "smoke"   # where it came from


def test_unpack_from_file_and_http_urls(archive, runs):
    assert unpack_archive(archive.resolve().as_uri(), name="from-file")["installed"]
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(archive.parent), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
        assert unpack_archive(url, name="from-http", sha256=sha(archive))["installed"]
    finally:
        server.shutdown()
        server.server_close()
    assert sha(runs / "from-http" / "config.json") == sha(runs / "from-file" / "config.json")
    assert sorted(p.name for p in runs.iterdir()) == ["from-file", "from-http"], "downloads are removed"


def test_the_same_run_again_is_left_as_it_is(archive, runs):
    unpack_archive(archive)
    again = unpack_archive(archive)
    assert again["installed"] is False and again["run"] == "smoke"


# -------------------------------------------------------------- refusals --
def rewrite(src: Path, dst: Path, change) -> Path:
    """A copy of the archive ``src`` whose members pass through ``change(info, data) -> [(info, data)]``."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w:gz", compresslevel=1) as tout:
        for info in tin.getmembers():
            data = tin.extractfile(info).read() if info.isfile() else None
            for new, body in change(info, data):
                if body is not None:
                    new.size = len(body)
                tout.addfile(new, io.BytesIO(body) if body is not None else None)
    return dst


def member(name: str, body: bytes | None = b"x", kind=tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(body) if body is not None and kind == tarfile.REGTYPE else 0
    return info, body if kind == tarfile.REGTYPE else None


def flip_a_byte(info, data):
    if info.name == "smoke/eval/mixture_seed0.json":
        data = data.replace(b'"SA"', b'"SB"', 1)
    return [(info, data)]


def drop_a_model(info, data):
    return [] if info.name == "smoke/seed-0/models/pgd-1.safetensors" else [(info, data)]


def add(*extra):
    def change(info, data):
        return [(info, data), *(extra if info.name == "smoke/config.json" else ())]
    return change


def grow(info, data):
    return [(info, data + b" ")] if info.name == "smoke/config.json" else [(info, data)]


@pytest.mark.parametrize("change, message", [
    (flip_a_byte, "eval/mixture_seed0.json does not match its sha256 in the manifest"),
    (grow, "config.json has .* bytes, its manifest says"),
    (drop_a_model, "seed-0/models/pgd-1.safetensors is in the manifest but missing from the archive"),
    (add(member("smoke/eval/extra_seed0.json")), "eval/extra_seed0.json is in the archive but not in its manifest"),
    (add(member("/tmp/evil")), "is an absolute path"),
    (add(member("smoke/../evil")), "has '..'"),
    (add(member("smoke/eval/link", None, tarfile.SYMTYPE, "/etc/passwd")), "is a link"),
    (add(member("smoke/eval/hard", None, tarfile.LNKTYPE, "smoke/config.json")), "is a link"),
    (add(member("other/config.json")), "more than one top folder"),
    (add(member("smoke/config.json")), "holds 'smoke/config.json' twice"),
])
def test_a_changed_or_unsafe_archive_is_refused_and_nothing_installed(archive, runs, tmp_path, change, message):
    bad = rewrite(archive, tmp_path / "bad.tar.gz", change)
    with pytest.raises(ArchiveError, match=message):
        unpack_archive(bad)
    assert not runs.exists() or not list(runs.iterdir()), "nothing installed, no temporary folder left"


def test_a_run_of_the_same_name_with_other_content_is_refused(archive, runs):
    unpack_archive(archive)
    (runs / "smoke" / "eval" / "benign_seed0.json").write_text("{}")
    before = sorted(p.name for p in runs.iterdir())
    with pytest.raises(ArchiveError, match=r"already exists .*eval/benign_seed0.json differs.*--name NEW_NAME"):
        unpack_archive(archive)
    assert sorted(p.name for p in runs.iterdir()) == before
    assert unpack_archive(archive, name="smoke-2")["installed"]


def test_not_an_archive_is_refused(runs, tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar file")
    with pytest.raises(ArchiveError, match="not a run archive"):
        unpack_archive(junk)
    with pytest.raises(ArchiveError, match="only http://, https:// and file://"):
        unpack_archive("ftp://example.org/run.tar.gz")
    with pytest.raises(FileNotFoundError, match="no archive at"):
        unpack_archive(tmp_path / "missing.tar.gz")
    assert not runs.exists()


def test_an_archive_or_download_over_the_size_bound_is_refused_before_it_is_read(archive, runs, tmp_path,
                                                                                  monkeypatch):
    size = archive.stat().st_size
    monkeypatch.setenv(MAX_BYTES_ENV, str(size - 1))
    with pytest.raises(ArchiveError, match=rf"the file \({size} bytes\) is over the bound of {size - 1} bytes"
                                           rf".*{MAX_BYTES_ENV}=BYTES"):
        unpack_archive(archive)
    body = archive.read_bytes()

    class Unannounced(http.server.BaseHTTPRequestHandler):   # no Content-Length: counted as it comes
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass
    for handler, message in ((Unannounced, "the download is over the bound"),
                             (lambda *a, **kw: http.server.SimpleHTTPRequestHandler(
                                 *a, directory=str(archive.parent), **kw),
                              rf"the download \(announced {size} bytes\) is over the bound")):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.RequestHandlerClass.log_message = lambda *a: None
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with pytest.raises(ArchiveError, match=message):
                unpack_archive(f"http://127.0.0.1:{server.server_address[1]}/{archive.name}")
        finally:
            server.shutdown()
            server.server_close()
    # compressed small, decompressed over the bound (a gzip bomb): refused while decompressing
    with tarfile.open(archive) as tar:
        unpacked = sum(m.size for m in tar.getmembers())
    monkeypatch.setenv(MAX_BYTES_ENV, str(max(size, unpacked // 2)))
    with pytest.raises(ArchiveError, match="its decompressed content is over the bound"):
        unpack_archive(archive)
    monkeypatch.setenv(MAX_BYTES_ENV, "lots")
    with pytest.raises(ValueError, match=f"{MAX_BYTES_ENV} must be a whole number of bytes"):
        unpack_archive(archive)
    assert not runs.exists() or not list(runs.iterdir()), "nothing installed, no download left"


def test_a_manifest_over_its_bound_is_refused_unread(archive, runs, tmp_path, monkeypatch):
    monkeypatch.setattr(archive_module, "MAX_MANIFEST_BYTES", 10)
    with pytest.raises(ArchiveError, match=f"its {MANIFEST} .* is over the bound of 10 bytes"):
        unpack_archive(archive)


# ------------------------------------------------------------------- CLI --
def test_pack_and_unpack_from_the_command_line(smoke, runs, tmp_path, capsys):
    run, _ = smoke
    shutil.copytree(run.root, runs / "mine", ignore=shutil.ignore_patterns(".lock*"))
    assert main(["pack", "mine", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "mine.tar.gz"
    assert f"-> {path}" in out and sha(path) in out
    assert main(["unpack", str(path), "--name", "copy", "--sha256", sha(path)]) == 0
    out = capsys.readouterr().out
    assert f"installed run copy at {runs / 'copy'}" in out
    assert "python -m dwf_lab run --profile smoke --run copy --set n_train=64" in out
    assert main(["unpack", str(path), "--name", "other", "--sha256", "0" * 64]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dwf-lab: error: ") and err.count("\n") == 1 and "nothing was installed" in err
    assert not (runs / "other").exists()
