"""Run directories: one folder holds everything a run made, and is all it needs to resume.

runs/<name>/
  config.json              the resolved profile, its digest and checksum (a run refuses a different,
                           hand-edited or damaged one, and never rewrites it then)
  .lock, .lock.owner.json  held while a command needs the whole run (pid, host, command)
  .locks/seed-<k>/<part>.lock (+ .owner.json)  held while one process trains a stage or
                           evaluates a model of a seed: processes share a run, one per part
  seed-<k>/
    metrics.jsonl          one JSON object per event (epoch ends, resumes, stage ends)
    checkpoints/<stage>/   state.safetensors (resume) + epoch-NNN.safetensors
    models/<stage>.safetensors   the finished model of each stage (marks it done)
  eval/<stage>_seed<k>.json      evaluation results, per example included
  eval/convergence/<stage>_seed<k>.json   the worst case at the attacks' budget and at twice it
  report/                  Tables 2-3 (JSON, markdown, HTML), Figures 6-7
  notebooks/               executed copies of the course (papermill)
"""
import hashlib
import json
import os
import re
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from dwf_lab.core.config import ADDED_FIELDS, NOT_IN_DIGEST, Profile, settings_digest
from dwf_lab.core.io import atomic_write_text
from dwf_lab.core.precision import evaluation_precision

RUNS_DIR_ENV = "DWF_RUNS_DIR"
CONFIG_KEYS = ("profile", "digest", "checksum")


class RunConfigMismatch(ValueError):
    """A run's config.json was made with other settings, was edited by hand, or is damaged:
    the run is refused and nothing in it is touched."""


class RunNotFoundError(FileNotFoundError):
    """A command that needs an existing run (evaluate, adaptive, report) named one that does not exist."""


class RunBusyError(RuntimeError):
    """Another process holds the run's lock (it is training or evaluating the same run)."""


def runs_dir() -> Path:
    env = os.environ.get(RUNS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").exists():
        return repo / "runs"
    return Path.cwd() / "runs"


def settings_checksum(settings: dict) -> str:
    """A hash of every setting in config.json (the digest leaves out speed switches): a file
    edited by hand no longer matches it."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _same(a, b) -> bool:
    return json.dumps(a, default=str) == json.dumps(b, default=str)


def _differences(old: dict, new: dict, keys, form: str = "{k}: {old!r} -> {new!r}") -> str:
    diffs = [form.format(k=k, old=old.get(k), new=v) for k, v in new.items()
             if k in keys and not _same(old.get(k), v)]
    return "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "")


_ADVICE = "Nothing was changed: restore the file, or delete the run folder to start it over."


def _damaged(name: str, cfg: Path, what: str) -> RunConfigMismatch:
    return RunConfigMismatch(f"run {name!r}: {cfg} is damaged ({what}). {_ADVICE}")


def read_config(root: Path, name: str | None = None) -> dict | None:
    """The run folder's config.json as {"profile", "digest", "checksum"}, its form checked (whether the
    settings are known and match their checksum is :class:`Run`'s check); None when there is none.
    A damaged one raises :class:`RunConfigMismatch` naming run ``name`` (default: the folder's name).
    The one reader of config.json: :class:`Run`, the archive and the CLI's stored settings use it."""
    root = Path(root)
    cfg, name = root / "config.json", name or root.name
    if not cfg.exists() and not cfg.is_symlink():
        if root.exists() and not root.is_dir():
            raise RunConfigMismatch(f"the run folder {root} is a file, not a folder")
        return None
    if cfg.is_symlink():   # never read through a link
        raise _damaged(name, cfg, "it is a link; a run's config.json is a plain file")
    try:
        old = json.loads(cfg.read_bytes())
    except (OSError, ValueError) as e:   # a directory, unreadable, not UTF-8, not JSON
        raise _damaged(name, cfg, f"{type(e).__name__}: {e}") from None
    if not isinstance(old, dict):
        kind = {list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(type(old), "a number")
        raise _damaged(name, cfg, f"it holds {kind}, not the run's settings")
    missing = [k for k in CONFIG_KEYS if k not in old]
    extra = sorted(set(old) - set(CONFIG_KEYS))
    if missing or extra or not isinstance(old["profile"], dict):
        raise _damaged(name, cfg, f"no {', '.join(missing)}" if missing else f"unknown keys {', '.join(extra)}"
                       if extra else "its profile is not a mapping")
    return old


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


PROBE_WAIT_S = 3.0
"""How long a command that only checks the whole run is free waits for it. A peer ``train`` checks
the same lock on its way to its own stage and holds it for milliseconds, so two processes started
together must not take each other's check for a holder; a real holder (pack, adaptive) holds it for
minutes and is still named after this wait."""


def check_not_busy(name: str, root: Path, wait: float = PROBE_WAIT_S) -> None:
    """A :class:`RunBusyError` when another process holds the whole run ``root`` (its ``.lock``) for
    longer than ``wait`` seconds: a command that needs the whole run checks it before it writes
    anything (config.json's seeds)."""
    path = Path(root) / ".lock"
    if not path.is_file():
        return
    lock = FileLock(path, timeout=wait, fallback_to_soft=False)
    try:
        lock.acquire()
    except Timeout:
        raise RunBusyError(f"run {name!r} at {root} is in use by {Run._holder(Path(root) / '.lock.owner.json')}; "
                           "wait for it to finish (or stop it), or use another --run") from None
    lock.release()


def _by_seed(folder: Path) -> dict[tuple[int, str], Path]:
    """``{(seed, name): path}`` of the ``<name>_seed<k>.json`` files in ``folder``."""
    found = ((re.fullmatch(r"(?P<name>.+)_seed(?P<seed>\d+)\.json", p.name), p) for p in sorted(folder.glob("*.json")))
    return {(int(m["seed"]), m["name"]): p for m, p in found if m}


class Run:
    """A run directory. ``Run(name, profile)`` creates it (or checks it was made with the same
    settings); :meth:`open` only opens one that exists. Either refuses a config.json that was
    made with other settings, edited by hand or damaged, and never rewrites it then."""

    def __init__(self, name: str, profile: Profile, root: Path | None = None, create: bool = True):
        if not isinstance(name, str) or not name or "/" in name or "\0" in name or name.startswith("."):
            raise ValueError(f"run names are plain folder names, got {name!r}")
        self.name = name
        self.profile = profile
        self.root = Path(root) if root is not None else runs_dir() / name
        self._check_or_write_config(create)
        if profile.eval_precision == "auto":
            self.profile = profile.replace(eval_precision=self.stored_precision() or evaluation_precision(profile))

    @classmethod
    def open(cls, name: str, profile: Profile, root: Path | None = None) -> "Run":
        """An existing run, checked against ``profile``; :class:`RunNotFoundError` when there is
        none. Creates and writes nothing."""
        return cls(name, profile, root, create=False)

    def stored_precision(self) -> str | None:
        """The precision the run's stored evaluation results were computed in (the most common one
        where they differ; None when there are none yet). A profile's ``eval_precision="auto"`` is
        decided by a measurement on the machine that first evaluates the run (a probe a busy moment
        can sway, and a machine without bf16 units decides otherwise); after that the run keeps
        what its results were computed in, so a notebook opened later, or the run unpacked on
        another machine, goes on in the same arithmetic and never meets its own results as
        computed with other settings."""
        counts: dict[str, int] = {}
        for path in sorted(self.eval_dir.glob("*.json")) if self.eval_dir.is_dir() else ():
            if path.is_symlink():
                continue   # never read through a link (the report refuses it)
            try:
                rec = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            found = [(rec.get("settings") or {}).get("precision"),
                     ((rec.get("adaptive") or {}).get("settings") or {}).get("precision")]
            for precision in found:
                if precision in ("fp32", "bf16"):
                    counts[precision] = counts.get(precision, 0) + 1
        return max(sorted(counts, reverse=True), key=counts.get) if counts else None   # a tie: fp32

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    def _read_config(self) -> dict | None:
        """config.json as {"profile", "digest", "checksum"} (:func:`read_config`), its settings
        checked against this dwf-lab's and their checksum; None when there is none."""
        cfg = self.config_path
        old = read_config(self.root, self.name)
        if old is None:
            return None
        known = set(self.profile.to_dict())
        lost = sorted(known - set(old["profile"]) - set(ADDED_FIELDS))
        unknown = sorted(set(old["profile"]) - known)
        if lost or unknown:
            raise _damaged(self.name, cfg, f"settings missing: {', '.join(lost)}" if lost
                           else f"unknown settings: {', '.join(unknown)}")
        if old["checksum"] != settings_checksum(old["profile"]) or old["digest"] != settings_digest(old["profile"]):
            shown = _differences(old["profile"], self.profile.to_dict(), known - {"seeds"},
                                 "{k} is {old!r} there and {new!r} here")
            versus = (f"it differs from this command's settings in {shown}" if shown
                      else "its settings match this command's, but not its own checksum")
            raise RunConfigMismatch(f"run {self.name!r}: {cfg} was edited by hand (its settings no "
                                    f"longer match its checksum and digest; {versus}). {_ADVICE}")
        for k, v in ADDED_FIELDS.items():   # a run stored before the field existed had its default
            old["profile"].setdefault(k, v)
        return old

    def _check_or_write_config(self, create: bool) -> None:
        """Under a lock beside the run folder, so processes that open one run at once (seeds added,
        stages trained side by side) read and extend one config.json, never each other's half."""
        guard = self.root.parent / ".locks" / f"{self.root.name}.config.lock"
        if not create:
            return self._check_config(create)
        self._check_config(create, dry=True)   # a refusal before the guard (or anything) is written
        try:
            guard.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot write the run folder {self.root}: {e.strerror or e} ({type(e).__name__})") from None
        with FileLock(guard, timeout=60, fallback_to_soft=False):
            self._check_config(create)

    def _check_config(self, create: bool, dry: bool = False) -> None:
        """Read, check and (``create``) write config.json; ``dry``: only refuse, write nothing."""
        old = self._read_config()
        new = self.profile.to_dict()
        if old is None:
            if not create:
                raise RunNotFoundError(
                    f"no run {self.name!r} at {self.root} (no config.json there); train it first "
                    f"(python -m dwf_lab train --run {self.name}) or check --run and {RUNS_DIR_ENV}")
            made = self._made_files()
            if made:   # never adopted by settings its models may not match
                raise RunConfigMismatch(
                    f"run {self.name!r}: {self.root} holds a run's files ({made[0]}) but no config.json, so the "
                    "settings they were made with are unknown. Nothing was changed: restore its config.json, "
                    "or use another run name (--run NAME), or delete that folder to start it over.")
        elif old["digest"] != self.profile.digest():
            shown = _differences(old["profile"], new, set(new) - NOT_IN_DIGEST)
            diverged = create and self._diverged_unfinished()
            if diverged and dry:
                return
            if diverged:   # a run that diverged before any stage finished: corrected settings start it over
                self._start_over(old["profile"], shown, diverged)
                new["seeds"] = sorted(set(old["profile"]["seeds"]) | set(self.profile.seeds))
                return self._write_config(new)
            raise RunConfigMismatch(
                f"run {self.name!r} at {self.root} was made with other settings ({shown}). "
                "Nothing was changed. Use another run name (--run NAME), or delete that "
                "folder to start it over.")
        else:   # seeds may grow between invocations: record the union
            new["seeds"] = sorted(set(old["profile"]["seeds"]) | set(self.profile.seeds))
            if not create or _same(old["profile"], new):
                return
        if not dry:
            self._write_config(new)

    def _made_files(self) -> list[str]:
        """What the run folder holds that a run makes (finished models, checkpoints, results)."""
        if not self.root.is_dir():
            return []
        found = (p for pattern in ("seed-*/models/*.safetensors", "seed-*/checkpoints/*", "eval/*.json")
                 for p in sorted(self.root.glob(pattern)))
        return [p.relative_to(self.root).as_posix() for p in found][:1]

    def _diverged_unfinished(self) -> str | None:
        """The stage whose training diverged (a ``diverged`` event in a seed's log), when nothing of
        the run has finished (no model, no result); else None."""
        if any(self.root.glob("seed-*/models/*.safetensors")) or any(self.root.glob("eval/*.json")) \
                or any(self.root.glob("seed-*/ablations/*")):
            return None
        for seed_dir in sorted(self.root.glob("seed-*")):
            seed = seed_dir.name.removeprefix("seed-")
            if seed.isdigit():
                for rec in reversed(self.metrics(int(seed))):
                    if rec.get("event") == "diverged":
                        return str(rec.get("stage"))
        return None

    def _start_over(self, old: dict, shown: str, stage: str) -> None:
        """The partial checkpoints of the diverged settings set aside (hidden: never resumed, never
        packed), the change logged and said."""
        tag, moved = settings_digest(old), []
        for ck in sorted(self.root.glob("seed-*/checkpoints")):
            aside, k = ck.with_name(f".checkpoints-diverged-{tag}"), 1
            while aside.exists():
                aside, k = ck.with_name(f".checkpoints-diverged-{tag}-{k}"), k + 1
            ck.rename(aside)
            moved.append(aside.relative_to(self.root).as_posix())
        for seed_dir in sorted(self.root.glob("seed-*")):
            with open(seed_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"event": "settings_changed", "after_divergence_in": stage,
                                    "changes": shown}) + "\n")
        aside = f"; its partial checkpoints are set aside in {', '.join(moved)}" if moved else ""
        print(f"dwf-lab: notice: run {self.name!r} diverged in stage {stage!r} before any stage finished; it "
              f"starts over with the new settings ({shown}){aside}", file=sys.stderr)

    def _write_config(self, settings: dict) -> None:
        created = not self.root.exists()
        text = json.dumps({"profile": settings, "digest": settings_digest(settings),
                           "checksum": settings_checksum(settings)}, indent=1, default=str)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.config_path, text)
        except OSError as e:
            if created:
                try:
                    self.root.rmdir()
                except OSError:
                    pass
            raise OSError(f"cannot write the run folder {self.root}: "
                          f"{e.strerror or e} ({type(e).__name__})") from None

    # ---- one writer per run, or per part of it
    @contextmanager
    def lock(self, command: str, part: str | None = None, wait: float = 0):
        """Hold the run (``part`` None) or one part of it (``"seed-0/pgd-1"``: a stage's training,
        ``"seed-0/eval-mixture"``: a model's evaluation) for this process while ``command`` works.

        A second holder of the same lock (another process, or a second lock in this one) gets a
        :class:`RunBusyError` naming the holder, from the pid / host / command written beside the
        lock, after waiting up to ``wait`` seconds. Different parts are held by different processes
        at once: two experts of one run train side by side. The OS releases a lock when its process
        dies, so a killed run never blocks the next one; its leftover note is overwritten, and only
        ever read while someone really holds the lock. Under torchrun each rank holds its own lock
        (rank 0: the same one a single process takes).
        """
        rank = int(os.environ.get("RANK", "0"))
        stem = ".lock" if rank == 0 else f".lock-rank{rank}"
        base = self.root if part is None else self.root / ".locks" / part
        if part is not None:
            base.parent.mkdir(parents=True, exist_ok=True)
            stem = f"{base.name}{stem}"
            base = base.parent
        note = base / f"{stem}.owner.json"
        lock = FileLock(base / stem, timeout=wait, fallback_to_soft=False)
        try:
            lock.acquire()
        except Timeout:
            what = f"run {self.name!r} at {self.root}" + (f" ({part})" if part else "")
            raise RunBusyError(f"{what} is in use by {self._holder(note)}; "
                               "wait for it to finish (or stop it), or use another --run") from None
        try:
            atomic_write_text(note, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                "command": command, "since": time.time()}))
            yield self
        finally:
            try:
                note.unlink()
            except OSError:
                pass
            lock.release()

    @staticmethod
    def _holder(note: Path) -> str:
        unknown = "another process (which one is not written yet)"
        try:
            who = json.loads(note.read_text())
            pid, host, command = int(who["pid"]), str(who["host"]), str(who["command"])
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(who["since"])))
        except (OSError, ValueError, KeyError, TypeError, OverflowError):
            return unknown
        if host == socket.gethostname() and not _alive(pid):
            return unknown   # a note left by a killed process; the new holder has not written its own yet
        who = "this process" if (pid, host) == (os.getpid(), socket.gethostname()) else "another process"
        return f"{who} ({command!r}, pid {pid} on {host}, since {since})"

    # ---- paths
    def seed_dir(self, seed: int) -> Path:
        return self.root / f"seed-{seed}"

    def model_path(self, seed: int, stage: str) -> Path:
        return self.seed_dir(seed) / "models" / f"{stage}.safetensors"

    def ckpt_dir(self, seed: int, stage: str) -> Path:
        return self.seed_dir(seed) / "checkpoints" / stage

    def eval_path(self, seed: int, stage: str) -> Path:
        return self.root / "eval" / f"{stage}_seed{seed}.json"

    def ablation_dir(self, seed: int, name: str) -> Path:
        """Everything one ablation variant trains (its own models/ and checkpoints/)."""
        return self.seed_dir(seed) / "ablations" / name

    def checklist_path(self, seed: int, stage: str, suffix: str = ".json") -> Path:
        """The gradient-masking checklist of one model (``.json`` data, ``.md`` text)."""
        return self.report_dir / f"checklist_{stage}_seed{seed}{suffix}"

    def convergence_path(self, seed: int, stage: str) -> Path:
        """One model's worst case at its attacks' budget and at twice it (:mod:`dwf_lab.pipeline.convergence`)."""
        return self.eval_dir / "convergence" / f"{stage}_seed{seed}.json"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def notebooks_dir(self) -> Path:
        return self.root / "notebooks"

    def is_done(self, seed: int, stage: str) -> bool:
        return self.model_path(seed, stage).exists()

    def logger(self, seed: int, folder: Path | None = None):
        """A function appending one JSON line per event to ``metrics.jsonl`` in ``folder`` (default:
        the seed's folder; an ablation variant logs into its own)."""
        path = Path(folder or self.seed_dir(seed)) / "metrics.jsonl"

        def log(rec: dict) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                f.write(json.dumps(rec, default=str) + "\n")
                f.flush()
        return log

    def metrics(self, seed: int, folder: Path | None = None) -> list[dict]:
        """The events :meth:`logger` wrote (in ``folder``, default the seed's); a line cut by a crash
        or unreadable file is skipped."""
        path = Path(folder or self.seed_dir(seed)) / "metrics.jsonl"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return []
        out = []
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: skip it
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def evaluations(self) -> dict[tuple[int, str], Path]:
        """``{(seed, model): path}`` of the evaluation results in ``eval/`` (:meth:`eval_path`'s names)."""
        return _by_seed(self.eval_dir)

    def convergences(self) -> dict[tuple[int, str], Path]:
        """``{(seed, model): path}`` of the convergence files written (:meth:`convergence_path`'s names)."""
        return _by_seed(self.convergence_path(0, "any").parent)

    def checklists(self) -> set[tuple[int, str]]:
        """``{(seed, model)}`` whose gradient-masking checklist is written (:meth:`checklist_path`, both files)."""
        found = (re.fullmatch(r"checklist_(?P<name>.+)_seed(?P<seed>\d+)\.json", p.name)
                 for p in self.report_dir.glob("checklist_*_seed*.json"))
        return {(int(m["seed"]), m["name"]) for m in found
                if m and self.checklist_path(int(m["seed"]), m["name"], ".md").exists()}
