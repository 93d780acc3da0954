"""Run directories: every path of a run comes from ``Run``; a run refuses other settings and
keeps its files; seeds accumulate; speed switches may change between calls."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tinymodels import lock_holder  # tests/ is on sys.path

from dwf_lab.core.config import get_profile
from dwf_lab.store.runs import (
    RUNS_DIR_ENV,
    Run,
    RunBusyError,
    RunConfigMismatch,
    RunNotFoundError,
    check_not_busy,
    runs_dir,
)


def test_every_path_of_a_run_lies_under_its_root(tmp_path):
    p = get_profile("smoke")
    run = Run("r1", p, root=tmp_path / "r1")
    paths = [run.seed_dir(0), run.model_path(0, "benign"), run.ckpt_dir(0, "benign"), run.eval_path(0, "benign"),
             run.eval_dir, run.report_dir, run.notebooks_dir, run.ablation_dir(0, "experts-1"),
             run.checklist_path(0, "mixture"), run.checklist_path(0, "mixture", ".md")]
    assert all(tmp_path / "r1" in path.parents for path in paths)
    assert run.model_path(0, "benign").name == "benign.safetensors"
    assert run.checklist_path(0, "mixture", ".md").name == "checklist_mixture_seed0.md"
    assert not run.is_done(0, "benign")


def test_runs_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(RUNS_DIR_ENV, str(tmp_path / "elsewhere"))
    assert runs_dir() == tmp_path / "elsewhere"
    assert Run("x", get_profile("smoke")).root == tmp_path / "elsewhere" / "x"


@pytest.mark.parametrize("name", ["", "a/b", ".hidden"])
def test_run_names_are_plain_folder_names(name, tmp_path):
    with pytest.raises(ValueError, match="plain folder names"):
        Run(name, get_profile("smoke"), root=tmp_path / "x")


def test_other_settings_are_refused_and_the_config_is_kept(tmp_path):
    p = get_profile("smoke")
    Run("r", p, root=tmp_path / "r")
    before = (tmp_path / "r" / "config.json").read_text()
    with pytest.raises(RunConfigMismatch, match=r"width: 0\.0625 -> 0\.125"):
        Run("r", p.replace(width=0.125), root=tmp_path / "r")
    assert (tmp_path / "r" / "config.json").read_text() == before


def test_seeds_accumulate_and_speed_switches_may_change(tmp_path):
    p = get_profile("smoke")
    Run("r", p, root=tmp_path / "r")
    Run("r", p.replace(seeds=(1,), num_threads=1, expert_batching="vmap"), root=tmp_path / "r")
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["profile"]["seeds"] == [0, 1] and cfg["digest"] == p.digest()


def test_metrics_log_skips_a_line_cut_by_a_crash(tmp_path):
    run = Run("r", get_profile("smoke"), root=tmp_path / "r")
    log = run.logger(0)
    log({"event": "epoch", "epoch": 1})
    with open(run.seed_dir(0) / "metrics.jsonl", "a") as f:
        f.write('{"event": "epo')
    assert run.metrics(0) == [{"event": "epoch", "epoch": 1}]


# ------------------------------------------- config.json: refused, never overwritten --
def _made(tmp_path):
    p = get_profile("smoke")
    Run("r", p, root=tmp_path / "r")
    return p, tmp_path / "r" / "config.json"


def test_a_hand_edited_config_is_refused_and_kept(tmp_path):
    p, cfg = _made(tmp_path)
    c = json.loads(cfg.read_text())
    c["profile"]["lr"] = 0.5                 # the digest is left alone
    cfg.write_text(json.dumps(c))
    before = cfg.read_bytes()
    with pytest.raises(RunConfigMismatch) as info:
        Run("r", p, root=tmp_path / "r")
    assert str(info.value) == (
        f"run 'r': {cfg} was edited by hand (its settings no longer match its checksum and digest; it differs "
        "from this command's settings in lr is 0.5 there and 0.01 here). Nothing was changed: restore the file, "
        "or delete the run folder to start it over.")
    assert cfg.read_bytes() == before
    c["profile"]["lr"], c["profile"]["device"] = 0.01, "cpu"    # a speed switch edited by hand: refused too
    cfg.write_text(json.dumps(c))
    with pytest.raises(RunConfigMismatch, match="edited by hand .* device is 'cpu' there and 'auto' here"):
        Run.open("r", p, root=tmp_path / "r")


@pytest.mark.parametrize("mutate, what", [
    (lambda c: c.pop("profile"), "no profile"),
    (lambda c: c.pop("digest"), "no digest"),
    (lambda c: c["profile"].pop("width"), "settings missing: width"),
    (lambda c: c["profile"].update(colour="red"), "unknown settings: colour"),
])
def test_a_config_with_keys_missing_is_damaged_not_a_traceback(tmp_path, mutate, what):
    p, cfg = _made(tmp_path)
    c = json.loads(cfg.read_text())
    mutate(c)
    cfg.write_text(json.dumps(c))
    before = cfg.read_bytes()
    with pytest.raises(RunConfigMismatch) as info:
        Run("r", p, root=tmp_path / "r")
    assert str(info.value) == (f"run 'r': {cfg} is damaged ({what}). Nothing was changed: restore the file, or "
                               "delete the run folder to start it over.")
    assert cfg.read_bytes() == before


@pytest.mark.parametrize("text, what", [
    ("[1, 2]", "it holds a list, not the run's settings"),
    ("7", "it holds a number, not the run's settings"),
    ('{"profile": ', "JSONDecodeError: Expecting value: line 1 column 13 (char 12)"),
])
def test_a_config_that_is_no_mapping_is_damaged(tmp_path, text, what):
    p, cfg = _made(tmp_path)
    cfg.write_text(text)
    with pytest.raises(RunConfigMismatch, match=re.escape(f"{cfg} is damaged ({what})")):
        Run("r", p, root=tmp_path / "r")
    assert cfg.read_text() == text


def test_a_config_that_is_a_directory_is_refused(tmp_path):
    (tmp_path / "r" / "config.json").mkdir(parents=True)
    with pytest.raises(RunConfigMismatch, match="config.json is damaged .IsADirectoryError"):
        Run("r", get_profile("smoke"), root=tmp_path / "r")


def test_an_unwritable_runs_folder_is_one_os_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as info:
        Run("r", get_profile("smoke"), root=tmp_path / "file" / "r")
    assert str(info.value).startswith(f"cannot write the run folder {tmp_path / 'file' / 'r'}: ")


def test_open_never_creates_a_run(tmp_path):
    with pytest.raises(RunNotFoundError) as info:
        Run.open("ghost", get_profile("smoke"), root=tmp_path / "ghost")
    assert str(info.value) == (f"no run 'ghost' at {tmp_path / 'ghost'} (no config.json there); train it first "
                               "(python -m dwf_lab train --run ghost) or check --run and DWF_RUNS_DIR")
    assert list(tmp_path.iterdir()) == []
    p, cfg = _made(tmp_path)
    before = cfg.read_bytes()
    assert Run.open("r", p.replace(seeds=(5,)), root=tmp_path / "r").name == "r"
    assert cfg.read_bytes() == before              # opening writes nothing


def _mutations():
    keys = st.sampled_from(["profile", "digest", "checksum"])
    values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
                       st.lists(st.integers(), max_size=3))
    return st.one_of(
        st.tuples(st.just("delete"), keys),
        st.tuples(st.just("delete-setting"), st.sampled_from(sorted(get_profile("smoke").to_dict()))),
        st.tuples(st.just("change"), st.sampled_from(sorted(get_profile("smoke").to_dict())), values),
        st.tuples(st.just("change-key"), keys, values),
        st.tuples(st.just("truncate"), st.integers(0, 2000)),
        st.tuples(st.just("replace"), st.one_of(st.just(b"[]"), st.just(b"3.5"), st.just(b"null"), st.binary(max_size=40))),
    )


def _mutate(text: str, m) -> bytes:
    c = json.loads(text)
    kind = m[0]
    if kind == "delete":
        del c[m[1]]
    elif kind == "delete-setting":
        del c["profile"][m[1]]
    elif kind == "change":
        c["profile"][m[1]] = m[2]
    elif kind == "change-key":
        c[m[1]] = m[2]
    elif kind == "truncate":
        return text.encode()[:m[1] % len(text)]
    else:
        return m[1]
    return json.dumps(c, indent=1).encode()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=_mutations())
def test_any_mutation_of_a_config_is_refused_and_leaves_it_byte_identical(tmp_path, m):
    p = get_profile("smoke")
    root = tmp_path / "m"
    if not (root / "config.json").exists():
        Run("m", p, root=root)
        (tmp_path / "orig.json").write_text((root / "config.json").read_text())
    orig = (tmp_path / "orig.json").read_text()
    bad = _mutate(orig, m)
    assume(bad != orig.encode() and (not bad.strip() or bad.strip() != orig.encode().strip()))
    try:
        assume(json.loads(bad) != json.loads(orig))      # a change of layout only is the same file
    except ValueError:
        pass
    (root / "config.json").write_bytes(bad)
    for make in (Run, Run.open):
        with pytest.raises(RunConfigMismatch):
            make("m", p, root=root)
        assert (root / "config.json").read_bytes() == bad


# ---------------------------------------------------------- one writer per run --
def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    p, _ = _made(tmp_path)
    run = Run("r", p, root=tmp_path / "r")
    holder = lock_holder(tmp_path / "r", "r")
    try:
        with pytest.raises(RunBusyError) as info:
            with run.lock("evaluate"):
                pass
        msg = str(info.value)
        assert msg.startswith(f"run 'r' at {tmp_path / 'r'} is in use by another process ('train', pid {holder.pid} on ")
        assert msg.endswith("); wait for it to finish (or stop it), or use another --run")
    finally:
        holder.kill()                      # SIGKILL: no clean-up, its note stays behind
        holder.wait()
    assert (tmp_path / "r" / ".lock.owner.json").exists()
    with run.lock("evaluate"):             # a killed holder never blocks the next run
        note = json.loads((tmp_path / "r" / ".lock.owner.json").read_text())
        assert note["pid"] == os.getpid() and note["command"] == "evaluate"
    assert not (tmp_path / "r" / ".lock.owner.json").exists()


def test_a_peers_brief_check_of_the_run_is_waited_out_and_a_real_holder_is_not(tmp_path):
    """Two `train` processes started together each check the whole run on their way to their own
    stage; one must not take the other's millisecond-long check for a holder (CI saw it once)."""
    p, _ = _made(tmp_path)
    run = Run("r", p, root=tmp_path / "r")
    with run.lock("train"):
        pass                                   # the .lock file exists, as after any command
    held, release = threading.Event(), threading.Event()

    def peer(hold_s):
        with Run.open("r", p, root=tmp_path / "r").lock("train"):
            held.set()
            release.wait(hold_s)

    brief = threading.Thread(target=peer, args=(0.3,))
    brief.start()
    held.wait(10)
    check_not_busy("r", tmp_path / "r", wait=5)        # waits the peer's check out
    brief.join()
    held.clear()
    long = threading.Thread(target=peer, args=(30,))
    long.start()
    held.wait(10)
    try:
        with pytest.raises(RunBusyError, match=r"^run 'r' at .* is in use by this process \('train', pid "):
            check_not_busy("r", tmp_path / "r", wait=0.2)
    finally:
        release.set()
        long.join()


def test_a_stale_note_is_not_taken_for_the_holder(tmp_path):
    p, _ = _made(tmp_path)
    run = Run("r", p, root=tmp_path / "r")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with run.lock("train"):
        # as if the holder had not written its note yet, and a killed process's note were still there
        (tmp_path / "r" / ".lock.owner.json").write_text(json.dumps(
            {"pid": dead.pid, "host": socket.gethostname(), "command": "train", "since": 0}))
        with pytest.raises(RunBusyError, match=r"is in use by another process \(which one is not written yet\)"):
            with Run.open("r", p, root=tmp_path / "r").lock("evaluate"):
                pass


def test_auto_evaluation_precision_is_pinned_to_what_the_runs_results_were_computed_in(tmp_path, monkeypatch):
    """"auto" is measured where a run is first evaluated; after that the run keeps its results'
    arithmetic, whatever a later probe on a busy or another machine says."""
    from dwf_lab.core import precision
    p = get_profile("smoke", eval_precision="auto", device="cpu")
    monkeypatch.setattr(precision, "bf16_attack_speedup", lambda threads: 2.0)    # bf16 units, idle
    run = Run("r", p, root=tmp_path / "r")
    assert run.stored_precision() is None and run.profile.eval_precision == "bf16"
    run.eval_dir.mkdir()
    (run.eval_dir / "benign_seed0.json").write_text(json.dumps({"settings": {"precision": "bf16"}}))
    monkeypatch.setattr(precision, "bf16_attack_speedup", lambda threads: 0.9)    # busy, or no bf16 units
    assert Run.open("r", p, root=tmp_path / "r").profile.eval_precision == "bf16"
    assert Run("other", p, root=tmp_path / "other").profile.eval_precision == "fp32"   # nothing stored: measured
    # asked for explicitly, it is a speed switch like amp: the run opens, and the results will say fp32
    assert Run.open("r", p.replace(eval_precision="fp32"), root=tmp_path / "r").profile.eval_precision == "fp32"
    (run.eval_dir / "b_seed0.json").write_text(json.dumps({"settings": {"precision": "fp32"},
                                                           "adaptive": {"settings": {"precision": "fp32"}}}))
    assert run.stored_precision() == "fp32"          # the most common precision of the stored results
