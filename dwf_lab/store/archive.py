"""Share a run: one archive of everything it made, and its checked installation on another machine.

:func:`pack_run` writes ``<run>.tar.gz``: the run's folder (config.json, the finished models and
their per-epoch checkpoints, metrics.jsonl, the evaluation results, the report with its entries and
model cards, the checklists, executed notebooks) under one top folder, plus ``manifest.json``: the
sha256 and size of every file, the kit's version and package versions, the finished stages. Left
out: lock files and other hidden files (names starting with ``.``: locks, half-written temp files),
``state.safetensors`` (resume state: a finished stage never reads it again) and the checkpoints of
a stage whose model is not finished (partial training).

:func:`unpack_archive` takes a path or an http(s)/file URL (fetched with urllib to a temporary
file), checks the archive, extracts it into a temporary folder beside the target, verifies every
file against the manifest, and only then renames that folder into place as the run (one rename:
a half-installed run never exists). It refuses, with one :class:`ArchiveError` line and nothing
installed, anything that does not match: a file whose sha256 or size differs, a file not in the
manifest, a file of the manifest missing, absolute paths, ``..``, links or devices in the archive,
a run of the same name with other content (install it under another name with ``name=``). A run
of the same name with the same files is left as it is.

Nothing of an archive is read into memory before its size is known to be bounded
(:func:`max_archive_bytes`, ``$DWF_MAX_ARCHIVE_BYTES``, default 64 GiB): a download stops at the
bound (a server announcing more is refused before a byte is fetched), a local file over it is
refused before it is opened, a gzip stream is decompressed (in blocks, to check it) only up to it,
and the manifest, the one member read whole, must be under :data:`MAX_MANIFEST_BYTES`. Each is one
:class:`ArchiveError` line naming the bound and how to raise it.

A run installed this way counts as trained: a stage is done when its ``models/<stage>.safetensors``
exists (:meth:`dwf_lab.store.runs.Run.is_done`), an evaluation when its ``eval/`` file exists, so
``python -m dwf_lab run`` and the notebooks load them instead of training.
"""
import datetime as _dt
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from dwf_lab.core.config import NOT_IN_DIGEST, PROFILES, get_profile
from dwf_lab.core.io import atomic_write_bytes, file_sha256
from dwf_lab.core.runtime import package_versions
from dwf_lab.store.runs import Run, RunConfigMismatch, read_config, runs_dir

FORMAT = "dwf-lab-run-archive"
VERSION = 1
MANIFEST = "manifest.json"
SUFFIX = ".tar.gz"
_URL = re.compile(r"^(https?|file)://", re.IGNORECASE)
_BLOCK = 1 << 20
MAX_BYTES_ENV = "DWF_MAX_ARCHIVE_BYTES"
MAX_BYTES_DEFAULT = 64 << 30       # a paper run with every epoch's checkpoints is a few GiB
MAX_MANIFEST_BYTES = 64 << 20      # a manifest lists sha256 and size per file: far below this


class ArchiveError(ValueError):
    """An archive that is refused (damaged, changed, unsafe, or clashing with an existing run);
    nothing was installed."""


# what reading a damaged archive can raise, from tarfile, gzip, zlib and json (a manifest nested
# thousands deep: RecursionError); each becomes one ArchiveError line "<archive> is damaged (...)"
_DAMAGE = (tarfile.TarError, OSError, EOFError, ValueError, zlib.error, RecursionError, MemoryError)


def max_archive_bytes() -> int:
    """The most bytes an archive may hold, compressed or not, and a download may bring:
    ``$DWF_MAX_ARCHIVE_BYTES`` (a whole number of bytes), else :data:`MAX_BYTES_DEFAULT`."""
    raw = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not raw:
        return MAX_BYTES_DEFAULT
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"${MAX_BYTES_ENV} must be a whole number of bytes >= 1, got {raw!r}")
    return int(raw)


def _too_big(where: str, what: str, limit: int) -> ArchiveError:
    return ArchiveError(f"{where}: {what} is over the bound of {limit} bytes ({limit / 2**30:.3g} GiB) on what "
                        f"an archive may hold; nothing was installed. Raise it with {MAX_BYTES_ENV}=BYTES "
                        "if you trust the archive")


def _damaged(where: str, e: BaseException | str) -> ArchiveError:
    what = e if isinstance(e, str) else f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return ArchiveError(f"{where} is damaged ({what}); nothing was installed. Fetch or copy the archive again")


# ------------------------------------------------------------ what goes in --
def _finished_checkpoints(rel: PurePosixPath, present: set[str]) -> bool:
    """True when ``rel`` (a file under a ``checkpoints`` folder) belongs to a finished model:
    ``seed-k/checkpoints/<stage>/`` needs ``seed-k/models/<stage>.safetensors``; an ablation's
    ``checkpoints/<expert>/`` its ``experts/<expert>.safetensors``, its ``checkpoints/`` its
    ``model.safetensors``. Resume state (``state.safetensors``) is never packed."""
    if rel.name == "state.safetensors":
        return False
    parts = rel.parts
    i = parts.index("checkpoints")
    owner = PurePosixPath(*parts[:i]) if i else PurePosixPath(".")
    rest = parts[i + 1:]
    if len(rest) == 1:   # an ablation variant's own checkpoints/epoch-NNN.safetensors
        return (owner / "model.safetensors").as_posix() in present
    stage = rest[0]
    final = "models" if owner.parent.name != "ablations" else "experts"
    return (owner / final / f"{stage}.safetensors").as_posix() in present


def files_to_pack(root: Path) -> list[str]:
    """The run's files that go into its archive (relative POSIX paths, sorted): every plain file
    except hidden ones, the old manifest, resume state and partial checkpoints. A link in the run
    is refused (an archive holds plain files only)."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if (here / d).is_symlink():
                raise ArchiveError(f"{here / d} is a link; a run archive holds plain files only: "
                                   "replace it by the folder it points to, or remove it")
        for f in sorted(filenames):
            path = here / f
            if f.startswith("."):
                continue
            if path.is_symlink() or not path.is_file():
                raise ArchiveError(f"{path} is a link or not a plain file; a run archive holds plain "
                                   "files only: replace it by a copy, or remove it")
            found.append(path.relative_to(root).as_posix())
    present = set(found)
    keep = []
    for rel in found:
        p = PurePosixPath(rel)
        if rel == MANIFEST:
            continue   # the manifest of an earlier unpack: a new one is written
        if "checkpoints" in p.parts[:-1] and not _finished_checkpoints(p, present):
            continue
        keep.append(rel)
    return sorted(keep)


def finished_stages(root: Path) -> dict[str, list[str]]:
    """{"seed-k": [stage, ...]}: the finished models of each seed (``seed-k/models/*.safetensors``)."""
    out = {}
    for seed_dir in sorted(Path(root).glob("seed-*")):
        stages = sorted(p.stem for p in (seed_dir / "models").glob("*.safetensors") if not p.name.startswith("."))
        if stages:
            out[seed_dir.name] = stages
    return out


def stored_profile(root: Path) -> dict:
    """The settings in a run folder's config.json (its ``profile``, :func:`read_config`), or one clear error."""
    try:
        stored = read_config(root)
    except RunConfigMismatch as e:
        raise ArchiveError(str(e)) from None
    if stored is None:
        raise FileNotFoundError(f"{root} is not a run (no config.json in it); pass a run name under "
                                f"{runs_dir()} or a run folder")
    if not isinstance(stored["profile"].get("name"), str):
        raise ArchiveError(f"{Path(root) / 'config.json'} is damaged (no profile name); restore it before packing")
    return stored["profile"]


def open_run(root: Path) -> Run:
    """The run in folder ``root``, checked like every command checks it (config.json's checksum).
    A link anywhere in the run is refused first (:func:`files_to_pack`): nothing of a run is read
    through a link."""
    files_to_pack(root)
    settings = dict(stored_profile(root))
    name = settings.pop("name")
    return Run.open(Path(root).name, get_profile(name, **settings), root=Path(root))


def _arg(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_arg(v) for v in value)
    return str(value)


def run_command(settings: dict, run_name: str, command: str = "run") -> str:
    """The command line that runs ``command`` on this run with its own settings: ``--profile`` and
    a ``--set`` for each setting that changes results and differs from the named profile (speed
    switches such as the device are left to the machine)."""
    name = settings.get("name")
    base = PROFILES[name].to_dict() if name in PROFILES else None
    words = ["python", "-m", "dwf_lab", command, "--profile", str(name), "--run", run_name]
    if base is not None:
        for key in sorted(settings):
            if key == "name" or (key in NOT_IN_DIGEST and key != "seeds") or key not in base:
                continue
            if json.dumps(settings[key], default=str) != json.dumps(base[key], default=str):
                words += ["--set", f"{key}={_arg(settings[key])}"]
    return shlex.join(words)


# ------------------------------------------------------------------- pack --
class _HashingReader:
    """A file object that hashes what tarfile reads from it."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def read(self, size=-1):
        data = self.f.read(size)
        self.h.update(data)
        self.n += len(data)
        return data


def _member(name: str, size: int, mtime: float, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = (0 if directory else size), int(mtime)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def resolve_run(run: str | Path) -> Path:
    """A run name (a folder under the runs directory) or a path to a run folder."""
    text = str(run)
    named = runs_dir() / text
    is_path = isinstance(run, Path) or "/" in text or os.sep in text or text in (".", "..")
    root = Path(text).expanduser() if is_path or (not named.exists() and Path(text).is_dir()) else named
    if not root.is_dir():
        raise FileNotFoundError(f"no run {text!r} at {root}; pass a run name under {runs_dir()} "
                                f"($DWF_RUNS_DIR) or the path of a run folder")
    return root.resolve()


def pack_run(run: str | Path, out: str | Path | None = None, refresh=None) -> dict:
    """Write the archive of a run (a name under the runs directory, or a run folder).

    ``out``: the archive's path (default ``./<run>.tar.gz``; a folder: ``<folder>/<run>.tar.gz``).
    The run is held (its lock) while it is packed, so no command of the kit writes to it meanwhile;
    the archive is written to a temporary file and renamed into place. ``refresh(run)``, when given,
    runs under that lock after every check has passed (``pack`` refreshes the report there: a
    refused pack changes nothing). Returns {"path", "sha256", "bytes", "files", "run"}.
    """
    root = resolve_run(run)
    the_run = open_run(root)
    name = the_run.name
    out = Path(out).expanduser() if out is not None else Path.cwd() / f"{name}{SUFFIX}"
    if out.is_dir():
        out = out / f"{name}{SUFFIX}"
    if out.resolve().is_relative_to(root):
        raise ArchiveError(f"{out} is inside the run it packs; write the archive elsewhere (--out PATH)")
    if not out.parent.is_dir() and out.parent.exists():
        raise ArchiveError(f"{out.parent} is a file, not a folder; pass another --out PATH")
    with the_run.lock("pack"):
        if refresh is not None:
            refresh(the_run)
        rels = files_to_pack(root)
        files = {}
        for rel in rels:
            path = root / rel
            files[rel] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
        settings = stored_profile(root)
        manifest = {"format": FORMAT, "version": VERSION, "run": name, "profile": settings["name"],
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "dwf_lab": package_versions().get("dwf_lab"), "versions": package_versions(),
                    "command": run_command(settings, name), "finished": finished_stages(root),
                    "files": files}
        body = json.dumps(manifest, indent=1).encode()
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        try:
            with tarfile.open(tmp, "w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:
                now = _dt.datetime.now().timestamp()
                tar.addfile(_member(name, 0, now, directory=True))
                tar.addfile(_member(f"{name}/{MANIFEST}", len(body), now), io.BytesIO(body))
                for rel in rels:
                    path = root / rel
                    st = path.stat()
                    with open(path, "rb") as f:
                        reader = _HashingReader(f)
                        tar.addfile(_member(f"{name}/{rel}", files[rel]["bytes"], st.st_mtime), reader)
                    if reader.h.hexdigest() != files[rel]["sha256"] or reader.n != files[rel]["bytes"]:
                        raise ArchiveError(f"{path} changed while the run was packed; pack it again "
                                           "when nothing writes to the run")
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return {"path": out, "sha256": file_sha256(out), "bytes": out.stat().st_size, "files": len(rels), "run": name}


# ----------------------------------------------------------------- unpack --
def _safe_rel(name: str, what: str) -> PurePosixPath:
    """A relative path with plain components only; else an ArchiveError naming it."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        raise ArchiveError(f"{what} {name!r} is not a plain relative path; refused, nothing was installed")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("/"):
        raise ArchiveError(f"{what} {name!r} is an absolute path; refused, nothing was installed")
    if any(part in ("..", ".", "") for part in name.rstrip("/").split("/")):
        raise ArchiveError(f"{what} {name!r} has '..' or an empty part; refused, nothing was installed")
    return p


def fetch(source: str, into: Path) -> Path:
    """``source`` as a local file: a path as it is, an http(s) or file URL downloaded into ``into``;
    either refused past :func:`max_archive_bytes`."""
    limit = max_archive_bytes()
    if not _URL.match(source):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", source):
            raise ArchiveError(f"{source}: only http://, https:// and file:// URLs are fetched; "
                               "download it yourself and pass the file")
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no archive at {path}" + (" (it is a folder)" if path.is_dir() else ""))
        if path.stat().st_size > limit:
            raise _too_big(source, f"the file ({path.stat().st_size} bytes)", limit)
        return path
    fd, tmp = tempfile.mkstemp(prefix=".download.", suffix=SUFFIX, dir=into)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(source, timeout=60) as r:
            announced = r.headers.get("Content-Length") if getattr(r, "headers", None) else None
            if announced is not None and announced.isdigit() and int(announced) > limit:
                raise _too_big(source, f"the download (announced {announced} bytes)", limit)
            got = 0
            while block := r.read(_BLOCK):
                got += len(block)
                if got > limit:
                    raise _too_big(source, "the download", limit)
                f.write(block)
    except ArchiveError:
        Path(tmp).unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:
        Path(tmp).unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise ArchiveError(f"could not fetch {source} ({reason}); check the URL, or download the "
                           "archive and pass its path") from None
    return Path(tmp)


def _read_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo | None, where: str) -> dict:
    if member is None:
        raise ArchiveError(f"{where} has no {MANIFEST}: it is not a dwf-lab run archive "
                           "(write one with python -m dwf_lab pack RUN)")
    if member.size > MAX_MANIFEST_BYTES:
        raise _too_big(where, f"its {MANIFEST} ({member.size} bytes)", MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(tar.extractfile(member).read())
    except (AttributeError, *_DAMAGE) as e:
        raise _damaged(where, f"its {MANIFEST} is unreadable: {type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError(f"{where}: {MANIFEST} is not a dwf-lab run manifest")
    if manifest.get("run") is not None and not isinstance(manifest["run"], str):
        raise _damaged(where, f"its {MANIFEST} names the run {manifest['run']!r}, not a folder name")
    files = manifest.get("files")
    if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
        raise ArchiveError(f"{where}: run archive version {manifest.get('version')!r} is newer than this "
                           f"dwf-lab reads ({VERSION}); upgrade dwf-lab")
    if not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("bytes"), int)
            for v in files.values()):
        raise ArchiveError(f"{where}: {MANIFEST} has no readable file list (path -> sha256, bytes)")
    for rel in files:
        _safe_rel(rel, "the manifest's file")
    if "config.json" not in files:
        raise ArchiveError(f"{where}: the manifest lists no config.json; it is not a run")
    return manifest


def _members(tar: tarfile.TarFile, where: str) -> tuple[str, dict[str, tarfile.TarInfo]]:
    """(top folder, {relative path: member}) after refusing anything unsafe or ambiguous."""
    top, files, seen = None, {}, set()
    for m in tar.getmembers():
        p = _safe_rel(m.name, f"{where}: the archive's entry")
        name = p.as_posix()
        if not (m.isfile() or m.isdir()):
            kind = "a link" if (m.issym() or m.islnk()) else "not a plain file or folder"
            raise ArchiveError(f"{where}: the archive's entry {m.name!r} is {kind}; refused, nothing was installed")
        if name in seen:
            raise ArchiveError(f"{where}: the archive holds {m.name!r} twice; refused, nothing was installed")
        seen.add(name)
        first = p.parts[0]
        if top is None:
            top = first
        elif first != top:
            raise ArchiveError(f"{where}: the archive holds more than one top folder ({top!r}, {first!r}); "
                               "a run archive holds one run")
        if m.isfile():
            if len(p.parts) == 1:
                raise ArchiveError(f"{where}: the file {m.name!r} is outside the run's folder")
            files[PurePosixPath(*p.parts[1:]).as_posix()] = m
    if top is None:
        raise ArchiveError(f"{where} is empty")
    for rel in sorted(files):   # `a` and `a/b`: a file where another entry needs a folder
        for parent in PurePosixPath(rel).parents:
            if parent.as_posix() in files:
                raise ArchiveError(f"{where}: the archive holds {parent.as_posix()!r} as a file and also "
                                   f"{rel!r} inside it; refused, nothing was installed")
    return top, files


def _check_compression(path: Path, where: str) -> None:
    """A gzip archive decompresses to its end with the right CRC and length (tarfile alone reads only
    as far as it needs, and stops at the first unreadable entry header without a word)."""
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            return   # not gzip: tarfile says whether it is a tar at all (its size is bounded by fetch)
    limit, total = max_archive_bytes(), 0
    try:
        with gzip.open(path, "rb") as g:
            while block := g.read(_BLOCK):
                total += len(block)
                if total > limit:
                    raise _too_big(where, "its decompressed content", limit)
    except _DAMAGE as e:
        if isinstance(e, ArchiveError):
            raise
        raise _damaged(where, e) from None


def _check_end(tar: tarfile.TarFile, where: str) -> None:
    """After the last entry tarfile read comes only the zero padding of a tar's end: anything else is
    an entry whose header is unreadable (tarfile ends the listing there silently)."""
    f = tar.fileobj
    try:
        f.seek(tar.offset)
        while block := f.read(_BLOCK):
            if block.strip(b"\0"):
                raise _damaged(where, f"an unreadable tar entry header at byte {tar.offset} of the tar stream")
    except _DAMAGE as e:
        if isinstance(e, ArchiveError):
            raise
        raise _damaged(where, e) from None


def _differs(root: Path, files: dict) -> str | None:
    """The first file of the manifest that ``root`` lacks or holds with other content, else None."""
    for rel, want in sorted(files.items()):
        path = root / rel
        if not path.is_file() or path.is_symlink():
            return f"{rel} is missing there"
        if path.stat().st_size != want["bytes"] or file_sha256(path) != want["sha256"]:
            return f"{rel} differs"
    return None


def _check_config(folder: Path, run_name: str, where: str) -> None:
    """The extracted config.json must be one this dwf-lab opens (known settings, its checksum)."""
    try:
        settings = dict(stored_profile(folder))
        Run.open(run_name, get_profile(settings.pop("name"), **settings), root=folder)
    except (ValueError, FileNotFoundError) as e:
        raise ArchiveError(f"{where}: its config.json cannot be used by this dwf-lab "
                           f"({' '.join(str(e).split())}); nothing was installed") from None


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or os.sep in name or "\0" in name \
            or name.startswith(".") or name in ("..",):
        raise ArchiveError(f"run names are plain folder names, got {name!r}; choose another with --name NAME")
    return name


def unpack_archive(source: str | Path, name: str | None = None, root: str | Path | None = None,
                   sha256: str | None = None) -> dict:
    """Verify an archive written by :func:`pack_run` and install it as a run (module docstring).

    ``source``: a path, or an http(s)/file URL. ``name``: the run's name (default: the one it was
    packed under). ``root``: the runs directory (default :func:`~dwf_lab.store.runs.runs_dir`).
    ``sha256``: when given, the archive file itself must have this hash (e.g. one published beside
    the download). Returns {"run", "root", "files", "installed" (False: the same run was already
    there), "manifest"}.
    """
    runs_root = Path(root).expanduser() if root is not None else runs_dir()
    made = [d for d in (runs_root, *runs_root.parents) if not d.exists() and not d.is_symlink()]
    try:
        runs_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_empty(made)
        raise OSError(f"cannot make the runs folder {runs_root}: {e.strerror or e} ({type(e).__name__})") from None
    download = None
    tmp_dir = None
    try:
        path = fetch(str(source), runs_root)
        download = path if _URL.match(str(source)) else None
        where = str(source)
        if sha256 is not None:
            got = file_sha256(path)
            if got != sha256.strip().lower():
                raise ArchiveError(f"{where} has sha256 {got}, not the {sha256} it should have: the "
                                   "download is damaged or another file; nothing was installed")
        _check_compression(path, where)
        try:
            tar = tarfile.open(path, "r:*")
        except _DAMAGE:
            raise ArchiveError(f"{where} is not a run archive, or is damaged (not a readable tar.gz file); "
                               "nothing was installed") from None
        with tar:
            try:
                top, members = _members(tar, where)
                _check_end(tar, where)
                manifest = _read_manifest(tar, members.pop(MANIFEST, None), where)
            except _DAMAGE as e:
                if isinstance(e, ArchiveError):
                    raise
                raise _damaged(where, e) from None
            files = manifest["files"]
            extra = sorted(set(members) - set(files))
            if extra:
                raise ArchiveError(f"{where}: {extra[0]} is in the archive but not in its manifest "
                                   f"({len(extra)} such file(s)); refused, nothing was installed")
            missing = sorted(set(files) - set(members))
            if missing:
                raise ArchiveError(f"{where}: {missing[0]} is in the manifest but missing from the archive "
                                   f"({len(missing)} missing); refused, nothing was installed")
            for rel, m in members.items():
                if m.size != files[rel]["bytes"]:
                    raise ArchiveError(f"{where}: {rel} has {m.size} bytes, its manifest says "
                                       f"{files[rel]['bytes']}: the file was changed; refused, nothing was installed")
            run_name = _check_name(name if name is not None else str(manifest.get("run") or top))
            total = sum(v["bytes"] for v in files.values())
            free = shutil.disk_usage(runs_root).free
            if total > free:
                raise ArchiveError(f"the run needs {total / 1e6:.0f} MB but {runs_root} has {free / 1e6:.0f} MB "
                                   "free; nothing was installed")
            tmp_dir = Path(tempfile.mkdtemp(prefix=f".unpack-{run_name}.", dir=runs_root))
            for rel, m in sorted(members.items()):
                dest = tmp_dir / rel
                try:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    out = open(dest, "xb")
                except OSError as e:   # a clash the checks above missed: named in the archive's terms
                    raise ArchiveError(f"{where}: the archive's file {rel!r} cannot be placed in the run's "
                                       f"folder ({e.strerror or type(e).__name__}: another entry holds its "
                                       "place or its folder); refused, nothing was installed") from None
                h = hashlib.sha256()
                try:
                    with tar.extractfile(m) as src, out:
                        for block in iter(lambda: src.read(_BLOCK), b""):
                            h.update(block)
                            out.write(block)
                except _DAMAGE as e:
                    raise _damaged(where, f"{rel} cannot be read: {type(e).__name__}: "
                                          f"{' '.join(str(e).split())[:200]}") from None
                if h.hexdigest() != files[rel]["sha256"]:
                    raise ArchiveError(f"{where}: {rel} does not match its sha256 in the manifest (it was "
                                       "changed or damaged); refused, nothing was installed")
            atomic_write_bytes(tmp_dir / MANIFEST, json.dumps(manifest, indent=1).encode())
        _check_config(tmp_dir, run_name, where)
        target = runs_root / run_name
        if target.exists() or target.is_symlink():
            why = _differs(target, files)
            if why is None:
                return {"run": run_name, "root": target, "files": len(files), "installed": False,
                        "manifest": manifest}
            raise ArchiveError(
                f"a run {run_name!r} already exists at {target} with other content ({why}); nothing was "
                f"installed. Install it under another name: python -m dwf_lab unpack {source} --name NEW_NAME "
                "(or delete that folder first)")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_dir, 0o777 & ~umask)   # mkdtemp makes 0700; give the run the usual folder mode
        os.rename(tmp_dir, target)
        tmp_dir = None
        return {"run": run_name, "root": target, "files": len(files), "installed": True, "manifest": manifest}
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if download is not None:
            download.unlink(missing_ok=True)
        _remove_empty(made)   # only the folders this call made, and only where nothing was installed


def _remove_empty(made: list[Path]) -> None:
    """Remove the folders in ``made`` (deepest first) that are still empty."""
    for d in made:
        try:
            d.rmdir()
        except OSError:
            break
