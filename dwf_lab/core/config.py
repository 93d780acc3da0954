"""Settings as data: the paper's attack constants, the threat model, and the named profiles
``smoke`` (CI), ``laptop`` (learners' default) and ``paper`` (Table 5).

Every profile field can be overridden (``get_profile("laptop", width=0.25)``, or
``--set width=0.25`` on the command line). A profile fully determines a run: its
resolved form is saved as ``config.json`` in the run directory. One
:class:`ThreatModel` (``Profile.threat_model``) carries the norm, eps and the
evaluation step into every attack, evaluation, worst case, checklist and report.
"""
import dataclasses
import hashlib
import json
import math
import os
import re
import typing
from dataclasses import dataclass, fields
from typing import ClassVar

from dwf_lab.core.precision import evaluation_precision

# Algorithms 1 and 3: eps drawn per batch from {0.01, ..., 0.09} (pixel scale)
FGSM_EPSILONS: tuple[float, ...] = tuple(round(0.01 * i, 2) for i in range(1, 10))
# Algorithms 2 and 3: PGD iterations drawn per batch from {10, 20, 30, 40, 50}
PGD_STEPS: tuple[int, ...] = (10, 20, 30, 40, 50)
# the paper's threat model (Tables 2-4): L-inf, eps 8/255, PGD step 2/255
PGD_EPS = 8 / 255
PGD_ALPHA = 2 / 255


def pixel_fraction(v: float) -> str:
    """0.0313... -> '8/255' when v is a whole number of pixel levels, else '0.05'."""
    k = v * 255
    return f"{round(k)}/255" if v > 0 and abs(k - round(k)) < 1e-6 else f"{v:g}"


@dataclass(frozen=True)
class ThreatModel:
    """What the attacker may do: move every pixel by at most ``eps`` (L-inf, pixel units),
    staying in [0, 1]. ``alpha`` is the step of the evaluation's PGD. Every attack result and
    every per-example worst case of a run belongs to exactly one threat model."""
    norm: str = "Linf"
    eps: float = PGD_EPS
    alpha: float = PGD_ALPHA

    def __post_init__(self):
        if self.norm != "Linf":
            raise ValueError(f"only the L-inf threat model is implemented, got norm={self.norm!r}")

    def label(self) -> str:
        return f"L-inf, eps = {pixel_fraction(self.eps)} (pixels in [0, 1]), PGD step {pixel_fraction(self.alpha)}"

    def contains(self, eps: float) -> bool:
        """True when an attack at ``eps`` stays inside this ball."""
        return eps <= self.eps + 1e-9


PROFILE_ENV = "DWF_PROFILE"  # the notebooks' parameters cell honours it (nbval runs smoke)


@dataclass
class Profile:
    name: str
    # --- data
    dataset: str = "cifar10"
    fallback: str | None = "synthetic"   # used (with a loud warning) when the dataset is unavailable
    n_train: int | None = None           # None = the whole training set
    n_test: int | None = None            # evaluation test-set size (None = whole test set)
    # --- models
    width: float = 1.0                   # ResNet-18 width multiplier (1.0 = the paper's)
    gate_hidden: int = 256               # the gate MLP's hidden size (not given by the paper)
    n_fgsm_experts: int = 4
    n_pgd_experts: int = 4
    # --- optimisation (Table 5)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    expert_epochs: int = 150
    benign_epochs: int | None = None     # the benign expert's epochs (None = expert_epochs, as in Table 5)
    expert_batch: int = 128
    gate_epochs: int = 100               # gate-only phase with frozen experts (0 = off)
    mixture_epochs: int = 100
    mixture_batch: int = 128             # clean images per step; the step trains on 3x this
    # --- training attacks (Algorithms 1-3)
    fgsm_eps_choices: tuple[float, ...] = FGSM_EPSILONS
    pgd_eps: float = PGD_EPS
    pgd_alpha: float = PGD_ALPHA
    pgd_steps_choices: tuple[int, ...] = PGD_STEPS
    random_start: bool = True
    eval_pgd_alpha: float = PGD_ALPHA    # the evaluation's PGD step (the threat model: pgd_eps)
    # --- baselines of Tables 2-3 (ResNet-18 FGSM-AT and PGD-AT; plain ResNet-18 = benign expert)
    baselines: bool = True
    fgsm_at_eps: float = 0.03
    pgd_at_steps: int = 10
    at_adv_fraction: float = 0.5
    baseline_epochs: int = 150
    # --- evaluation (Tables 2-4)
    eval_fgsm_eps: tuple[float, ...] = FGSM_EPSILONS
    eval_pgd_steps: tuple[int, ...] = PGD_STEPS
    eval_long_steps: int = 100           # "100 (MS)" and "100 (A)"
    eval_restarts: int = 3
    eval_eot_samples: int = 1
    eval_long_for: str = "all"           # "all" models, or "key" (baselines + DWF only)
    eval_batch: int = 500
    eval_precision: str = "fp32"         # attacks' arithmetic: "fp32" | "bf16" | "auto" (bf16 where measured faster: a CPU)
    # --- runs
    seeds: tuple[int, ...] = (0,)
    ckpt_every: int = 200                # also checkpoint every N optimizer steps (0 = epoch ends only)
    keep_epoch_checkpoints: bool = True  # keep one model checkpoint per epoch
    deterministic: bool = False          # bit-identical CPU runs (resume tests)
    # --- fast path (issue: fast CUDA trainers); all off on CPU by "auto"
    device: str = "auto"
    amp: str = "auto"                    # "bf16" | "off" | "auto" (bf16 on CUDA)
    channels_last: str = "auto"          # "on" | "off" | "auto" (on for CUDA)
    compile: bool = False
    data_on_device: bool = True          # keep the whole dataset on the training device
    num_threads: int = 0                 # torch CPU threads (0 = torch's default)
    expert_batching: str = "loop"        # mixtures: "loop" over experts or one "vmap"ped call (eval mode)
    sync_batchnorm: bool = False         # torchrun on CUDA: BatchNorm statistics over the global batch
    description: str = ""

    def replace(self, **overrides) -> "Profile":
        return apply_overrides(self, overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """A short hash of the settings that change results (device/speed switches excluded)."""
        return settings_digest(self.to_dict())

    @property
    def threat_model(self) -> ThreatModel:
        """The run's one threat model: L-inf at ``pgd_eps``, evaluated with PGD steps of ``eval_pgd_alpha``."""
        return ThreatModel("Linf", self.pgd_eps, self.eval_pgd_alpha)

    @property
    def n_experts(self) -> int:
        return 1 + self.n_fgsm_experts + self.n_pgd_experts


# fields that change speed or bookkeeping, never what the run is: a run may change them between calls.
# The arithmetic of the training steps (amp) and of the evaluation attacks (eval_precision) is among
# them: every result records the precision it was computed in and is never read as another, and a
# run pins eval_precision="auto" to its stored results' precision (dwf_lab.store.runs.Run)
NOT_IN_DIGEST = frozenset({"device", "amp", "channels_last", "compile", "data_on_device", "num_threads",
                           "expert_batching", "sync_batchnorm", "description", "ckpt_every",
                           "keep_epoch_checkpoints", "seeds", "eval_batch", "eval_precision"})
_FIELDS = {f.name: f for f in fields(Profile)}
# fields added after runs were first stored, with the value every older run had: a config.json
# without one holds that value, and the digest leaves the field out at it, so older runs stay valid
ADDED_FIELDS: dict[str, object] = {"benign_epochs": None, "eval_precision": "fp32"}


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", dataset="synthetic", n_train=256, n_test=64, width=0.0625, gate_hidden=32,
        n_fgsm_experts=1, n_pgd_experts=1, expert_epochs=1, expert_batch=64, gate_epochs=0,
        mixture_epochs=1, mixture_batch=32, pgd_steps_choices=(1, 2), baseline_epochs=1,
        pgd_at_steps=2, eval_fgsm_eps=(0.01, 0.03, 0.09), eval_pgd_steps=(2, 4), eval_long_steps=4,
        eval_restarts=2, eval_long_for="key", eval_batch=64, ckpt_every=0, amp="off", channels_last="off",
        description="seconds on a CPU: CI, tests and notebook checks (generated data, tiny models; the "
                    "reference fp32 path, so results do not depend on the machine's speed)"),
    "laptop": Profile(
        name="laptop", dataset="cifar10", n_train=5000, n_test=500, width=0.25, gate_hidden=128,
        lr=0.05,
        expert_epochs=6, benign_epochs=25, expert_batch=128, gate_epochs=0, mixture_epochs=1, mixture_batch=64,
        pgd_steps_choices=(1, 2, 3), pgd_alpha=4 / 255, baseline_epochs=16, pgd_at_steps=3,
        at_adv_fraction=1.0,
        eval_pgd_steps=(10, 20, 30, 40, 50), eval_long_steps=100, eval_restarts=3,
        eval_long_for="key", eval_batch=250, eval_precision="auto", ckpt_every=100,
        description="the whole course on 2 CPU cores (times measured in the README): real CIFAR-10 (5,000 training / "
                    "500 test images), 1/4-width experts trained 6 epochs (benign 25, FGSM-AT and PGD-AT "
                    "16, all-adversarial, PGD-3) at lr 0.05 (the paper: 0.01 over 150), 1-3 step training "
                    "PGD (alpha 4/255), one end-to-end epoch; the paper's attacks on all 500 test images, "
                    "the adaptive attacks and the gradient-masking checklist on the first 100"),
    "paper": Profile(
        name="paper", dataset="cifar10", fallback=None, seeds=(0, 1, 2, 3, 4), ckpt_every=500,
        description="Table 5 exactly: full width and data, 150/100/100 epochs, 5 seeds"),
}


# ------------------------------------------------------------- datasets --
KNOWN_DATASETS = ("cifar10", "cifar10-subset", "svhn", "mnist", "synthetic")
_DATASET_ALIASES = {"cifar-10": "cifar10", "cifar-10-subset": "cifar10-subset",
                    "cifar10subset": "cifar10-subset"}


def canonical_dataset(name: str) -> str:
    """'CIFAR-10' -> 'cifar10'; an unknown name is a ValueError that lists the known ones."""
    key = name.strip().lower().replace("_", "-")
    key = _DATASET_ALIASES.get(key, key)
    if key not in KNOWN_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(KNOWN_DATASETS)}")
    return key


# ------------------------------------------------------------- settings --
def settings_digest(settings: dict) -> str:
    """The digest of a profile's settings as a dict (what :meth:`Profile.digest` hashes)."""
    d = {k: v for k, v in settings.items()
         if k not in NOT_IN_DIGEST and not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _field_type(name: str) -> tuple[type, bool, type | None]:
    """(type, None allowed, element type of a tuple) of a Profile field, from its annotation."""
    t = _FIELDS[name].type
    args = typing.get_args(t)
    optional = type(None) in args
    if optional:
        t = next(a for a in args if a is not type(None))
    if typing.get_origin(t) is tuple:
        return tuple, optional, typing.get_args(t)[0]
    return t, optional, None


_TYPE_TEXT = {bool: "true or false", int: "a whole number", float: "a number (or a fraction like 8/255)",
              str: "a text"}
_ITEMS_TEXT = {int: "whole numbers", float: "numbers (or fractions like 8/255)", str: "names"}


def _type_text(name: str) -> str:
    kind, optional, item = _field_type(name)
    text = f"a comma-separated list of {_ITEMS_TEXT[item]}" if kind is tuple else _TYPE_TEXT[kind]
    return text + (" or none" if optional else "")


def _parse_one(v: str, kind: type):
    if kind is bool:   # true/false only: "yes", "on" or "2" are refused, not guessed
        if v.lower() in ("1", "true"):
            return True
        if v.lower() in ("0", "false"):
            return False
        raise ValueError("not true or false")
    if kind in (int, float) and not (v.isascii() and v.isprintable()):
        raise ValueError("not ASCII")   # int("٣") is 3 in Python: digits of other scripts are refused
    if kind is int:
        return int(v)
    if kind is float:
        return eval_fraction(v)
    return v


def _typed(value, kind: type) -> bool:
    """True when a (non-string) value already has the field's type."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _has_type(name: str, value) -> bool:
    kind, optional, item = _field_type(name)
    if value is None:
        return optional
    if kind is tuple:
        return isinstance(value, tuple) and all(_typed(x, item) for x in value)
    return _typed(value, kind)


def _coerce(value, name: str):
    """A command-line string (or a Python value) as the field's type; else a ValueError that says
    what the field takes."""
    kind, optional, item = _field_type(name)
    wrong = ValueError(f"{name} must be {_type_text(name)}, got {value!r}")
    if isinstance(value, str):
        v = value.strip()
        if optional and v.lower() in ("none", "null"):
            return None
        if kind is tuple and v.strip("()[]").strip() and any(not s.strip() for s in v.strip("()[]").split(",")):
            raise ValueError(f"{name} must be {_type_text(name)}, got {value!r} (an empty item: "
                             "separate the values by single commas)")
        try:
            if kind is tuple:
                return tuple(_parse_one(s.strip(), item) for s in v.strip("()[]").split(",") if s.strip())
            return _parse_one(v, kind)
        except ZeroDivisionError:
            raise ValueError(f"{name} must be {_type_text(name)}, got {value!r} (a division by zero)") from None
        except (ValueError, OverflowError, TypeError):
            raise wrong from None
    if kind is tuple and isinstance(value, list):
        value = tuple(value)
    if _has_type(name, value):
        return value
    raise wrong


def eval_fraction(v: str) -> float:
    """'8/255' -> 0.0313...; plain numbers pass through."""
    if "/" in v:
        a, b = v.split("/")
        return float(a) / float(b)
    return float(v)


def apply_overrides(profile: Profile, overrides: dict) -> Profile:
    changes = {}
    for key, value in overrides.items():
        if key not in _FIELDS:
            raise ValueError(f"unknown setting {key!r}; settings are: {', '.join(sorted(_FIELDS))}")
        try:
            changes[key] = _coerce(value, key)
        except ValueError as e:
            raise ValueError(f"invalid profile: {e}") from None
    p = dataclasses.replace(profile, **changes)
    validate(p)
    return p


# what each field allows beyond its type: (test, text after "must be")
def _finite(v) -> bool:
    return math.isfinite(v)


_POSITIVE = (lambda v: _finite(v) and v > 0, "a finite number > 0")
_AT_LEAST_0 = (lambda v: v >= 0, ">= 0")
_AT_LEAST_1 = (lambda v: v >= 1, ">= 1")
_EPS = (lambda v: _finite(v) and 0 <= v <= 1, ">= 0 and <= 1 (a finite eps in pixel units)")
_STEP = (lambda v: _finite(v) and 0 < v <= 1, "> 0 and <= 1 (a finite step in pixel units)")


def _is_dataset(name: str) -> bool:
    try:
        return bool(canonical_dataset(name))
    except ValueError:
        return False


def _one_of(*allowed):
    return (lambda v: v in allowed, " or ".join(", ".join(allowed).rsplit(", ", 1)))


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_RULES = {
    "name": (lambda v: v.strip() != "", "a non-empty name"),
    "dataset": (_is_dataset, "one of " + ", ".join(KNOWN_DATASETS)),
    "fallback": (lambda v: v is None or v.strip().lower() == "synthetic", "synthetic or none"),
    "n_train": (lambda v: v is None or v >= 1, ">= 1 or none (the whole set)"),
    "n_test": (lambda v: v is None or v >= 1, ">= 1 or none (the whole set)"),
    "width": _POSITIVE, "gate_hidden": _AT_LEAST_1,
    "seeds": (lambda v: 0 <= v < 2 ** 32, ">= 0 and < 2**32"),
    "n_fgsm_experts": _AT_LEAST_0, "n_pgd_experts": _AT_LEAST_0,
    "lr": _POSITIVE, "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "benign_epochs": (lambda v: v is None or v >= 0, ">= 0 or none (= expert_epochs)"),
    "expert_epochs": _AT_LEAST_0, "gate_epochs": _AT_LEAST_0, "mixture_epochs": _AT_LEAST_0,
    "baseline_epochs": _AT_LEAST_0,
    "expert_batch": _AT_LEAST_1, "mixture_batch": _AT_LEAST_1, "eval_batch": _AT_LEAST_1,
    "fgsm_eps_choices": _EPS, "pgd_eps": _EPS, "fgsm_at_eps": _EPS, "eval_fgsm_eps": _EPS,
    "pgd_alpha": _STEP, "eval_pgd_alpha": _STEP,
    "pgd_steps_choices": _AT_LEAST_1, "pgd_at_steps": _AT_LEAST_1, "eval_pgd_steps": _AT_LEAST_1,
    "eval_long_steps": _AT_LEAST_1, "eval_restarts": _AT_LEAST_1, "eval_eot_samples": _AT_LEAST_1,
    "at_adv_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "eval_long_for": _one_of("all", "key"),
    "ckpt_every": _AT_LEAST_0, "num_threads": _AT_LEAST_0,
    "device": (lambda v: _DEVICE.fullmatch(v) is not None, "auto, cpu, cuda, cuda:N or mps"),
    "amp": _one_of("auto", "bf16", "off"),
    "channels_last": _one_of("auto", "on", "off"),
    "expert_batching": _one_of("loop", "vmap"),
    "eval_precision": _one_of("auto", "fp32", "bf16"),
}


def _problem(name: str, value) -> str | None:
    """What is wrong with one field's value (its type first, then its range), or None."""
    if not _has_type(name, value):
        return f"{name} must be {_type_text(name)}, got {value!r}"
    kind = _field_type(name)[0]
    if kind is tuple and not value:
        return f"{name} must name at least one value, got ()"
    test, allowed = _RULES.get(name, (lambda v: True, ""))
    values = value if kind is tuple else (value,)
    if not all(test(x) for x in values):
        what = f"every value of {name}" if kind is tuple else name
        return f"{what} must be {allowed}, got {value!r}"
    if name == "seeds" and len(set(value)) != len(value):
        return f"seeds must not repeat a seed, got {value!r}"
    return None


MIN_WIDTH = 1 / 64


def validate(p: Profile) -> None:
    """Every field of ``p`` has its type and an allowed value; else ONE ValueError line naming
    each wrong setting and what it allows."""
    problems = [msg for f in fields(Profile) if (msg := _problem(f.name, getattr(p, f.name)))]
    if not problems and p.width < MIN_WIDTH:
        problems.append(f"width must be >= 1/64 = {MIN_WIDTH} (below it the ResNet's first stage would have "
                        f"less than one of its 64 channels), got {p.width!r}")
    if problems:
        raise ValueError("invalid profile: " + "; ".join(problems))


def size_preset(p: Profile) -> str:
    """The named size (smoke | laptop | paper) whose attack budgets suit this profile."""
    if p.name not in PROFILES:
        raise ValueError(f"no attack-budget size for profile {p.name!r}: it is none of "
                         f"{', '.join(PROFILES)}; pass the settings explicitly")
    return p.name


class SizedSettings:
    """Attack budgets in the profiles' named sizes, for dataclasses with ``eps``, ``alpha`` and
    ``batch_size`` fields: ``SIZES[size]`` holds the fields that differ from the defaults, and
    :meth:`from_profile` fills in the run's threat model and evaluation batch (and, for settings
    with a ``precision`` field, the profile's evaluation precision, resolved on this machine)."""
    SIZES: ClassVar[dict[str, dict]] = {"smoke": {}, "laptop": {}, "paper": {}}

    @classmethod
    def sized(cls, size: str, **kw):
        if size not in cls.SIZES:
            raise ValueError(f"{cls.__name__} has no size {size!r}; sizes: {', '.join(cls.SIZES)}")
        return cls(**{**cls.SIZES[size], **kw})

    @classmethod
    def smoke(cls, **kw):
        """Seconds on tiny models: every check runs, with toy budgets (CI, notebook checks)."""
        return cls.sized("smoke", **kw)

    @classmethod
    def laptop(cls, **kw):
        """Minutes on a CPU for a few hundred images."""
        return cls.sized("laptop", **kw)

    @classmethod
    def paper(cls, **kw):
        """The standard budgets of the field."""
        return cls.sized("paper", **kw)

    @classmethod
    def from_profile(cls, p: Profile, **kw):
        """The size named like the profile (another name is an error), at the profile's threat model."""
        tm = p.threat_model
        given = {"eps": tm.eps, "alpha": tm.alpha, "batch_size": p.eval_batch}
        if "precision" in getattr(cls, "__dataclass_fields__", {}):
            given["precision"] = evaluation_precision(p)
        return cls.sized(size_preset(p), **{**given, **kw})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def get_profile(name: str | None = None, /, **overrides) -> Profile:
    """A named profile (default: $DWF_PROFILE, else ``laptop``) with field overrides."""
    name = name or os.environ.get(PROFILE_ENV) or "laptop"
    if "name" in overrides:
        raise ValueError(f"name is the profile's name and cannot be set (got {overrides['name']!r}); "
                         f"choose a profile with --profile ({', '.join(PROFILES)}), then --set its fields")
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return apply_overrides(PROFILES[name], overrides)


def parse_sets(pairs: list[str] | None) -> dict:
    """['width=0.25', 'seeds=0,1'] -> {'width': '0.25', 'seeds': '0,1'} (typed later)."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        k, v = pair.split("=", 1)
        if k != k.strip() or v != v.strip():
            raise ValueError(f"--set {pair!r} has spaces around its {'key' if k != k.strip() else 'value'}; "
                             f"write it as {k.strip()}={v.strip()}")
        if k in out:
            raise ValueError(f"{k} is set twice (--set {k}={out[k]} and --set {k}={v}); give each setting once")
        out[k] = v
    return out
