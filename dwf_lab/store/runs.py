"""Run directories: one folder holds everything a run made, and is all it needs to resume.

runs/<name>/
  config.json              the resolved profile (a run refuses a different one)
  seed-<k>/
    metrics.jsonl          one JSON object per event (epoch ends, resumes, stage ends)
    checkpoints/<stage>/   state.safetensors (resume) + epoch-NNN.safetensors
    models/<stage>.safetensors   the finished model of each stage (marks it done)
  eval/<stage>_seed<k>.json      evaluation results, per example included
  report/                  Tables 2-3 (JSON, markdown, HTML), Figures 6-7
  notebooks/               executed copies of the course (papermill)
"""
import json
import os
from pathlib import Path

from dwf_lab.core.config import NOT_IN_DIGEST, Profile
from dwf_lab.core.io import atomic_write_text

RUNS_DIR_ENV = "DWF_RUNS_DIR"


class RunConfigMismatch(ValueError):
    """The run directory was made with other settings; nothing in it is touched."""


def runs_dir() -> Path:
    env = os.environ.get(RUNS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").exists():
        return repo / "runs"
    return Path.cwd() / "runs"


class Run:
    def __init__(self, name: str, profile: Profile, root: Path | None = None):
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"run names are plain folder names, got {name!r}")
        self.name = name
        self.profile = profile
        self.root = Path(root) if root is not None else runs_dir() / name
        self._check_or_write_config()

    def _check_or_write_config(self) -> None:
        cfg = self.root / "config.json"
        new = {"profile": self.profile.to_dict(), "digest": self.profile.digest()}
        if cfg.exists():
            try:
                old = json.loads(cfg.read_text())
            except json.JSONDecodeError as e:
                raise RunConfigMismatch(f"{cfg} is unreadable ({e}); fix or remove it") from None
            if old.get("digest") != new["digest"]:
                diffs = {k: (old["profile"].get(k), v) for k, v in new["profile"].items()
                         if json.dumps(old["profile"].get(k)) != json.dumps(v, default=str)
                         and k not in NOT_IN_DIGEST}
                shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diffs.items())[:6])
                raise RunConfigMismatch(
                    f"run {self.name!r} at {self.root} was made with other settings ({shown}). "
                    "Nothing was changed. Use another run name (--run NAME), or delete that "
                    "folder to start it over.")
            # seeds may grow between invocations: record the union
            seeds = sorted(set(old["profile"].get("seeds", [])) | set(self.profile.seeds))
            new["profile"]["seeds"] = seeds
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg, json.dumps(new, indent=1, default=str))

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

    def logger(self, seed: int):
        path = self.seed_dir(seed) / "metrics.jsonl"

        def log(rec: dict) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                f.write(json.dumps(rec, default=str) + "\n")
                f.flush()
        return log

    def metrics(self, seed: int) -> list[dict]:
        path = self.seed_dir(seed) / "metrics.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash: skip it
        return out
