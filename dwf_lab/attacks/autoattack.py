"""The official AutoAttack (Croce & Hein, ICML 2020), run through the authors' own code.

AutoAttack is the evaluation the field compares against (RobustBench ranks models by it): a
fixed, parameter-free suite run as a cascade, each attack only on the images every earlier one
failed on. ``version="standard"``: APGD-CE, APGD-T (targeted DLR loss, 9 target classes),
FAB-T (9 targets) and Square (5,000 queries); ``version="rand"``, for a model whose forward
pass is random: APGD-CE and APGD-DLR with expectation over 20 draws of each gradient (EoT).
The code is the authors' (github.com/fra31/auto-attack), installed from PyPI as
``pyautoattack`` (MIT licence; the packaging RobustBench depends on); the kit only calls it.

:func:`official_autoattack` runs it on any ``nn.Module`` that takes images in [0, 1] and
returns logits (every dwf_lab model: normalization is inside), in eval mode without parameter
gradients (:func:`~dwf_lab.attacks.base.attack_mode`), and returns an :class:`AutoAttackResult`:

- ``correct``: per-example correctness, recomputed by the model on the returned images after
  checking them against the threat model (||x_adv - x||_inf <= eps, x_adv in [0, 1]); an image
  counts as robust only if the library's verdict and this recomputation both say so;
- ``stages``: the robust accuracy (%) after each attack of the cascade, starting from clean.
  The library computes these but only logs them, so they are read from its log (logger
  ``auto-attack``): the integer count of images each attack broke, per batch, summed. Two
  checks make this safe against a change in the library's messages: the counts must add up
  from the library's own final verdicts to its logged clean accuracy, and each stage must
  match the accuracy it logs after that attack; anything else is an error, never a guess;
- ``settings``: what ran (version, norm, eps, seed, images, batch size, the attacks and every
  budget read off the library's configured attack objects, library and torch versions) and
  ``standard``: whether every budget is the library's own untouched value. A reduced budget
  (:class:`Budget`, CPU tests and smoke runs only) makes ``standard`` False and the label
  (:func:`label`) say so. The library's own warnings (e.g. "it seems to be a randomized
  defense") are kept in ``settings["library_warnings"]``.

The library is kept quiet (its log goes only to the capture above), its reseeding of torch's
global generator is undone afterwards, and so is its ``sys.settrace(None)``, which would
otherwise switch off a coverage tool or debugger. Its TensorFlow modules are never imported.
"""
import dataclasses
import logging
import re
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn

from dwf_lab.attacks.art_suite import correctness
from dwf_lab.attacks.base import attack_mode, check_batch_size, check_inputs

INSTALL_HINT = ("the official AutoAttack needs the authors' package: pip install pyautoattack==0.2.0   "
                "(or: pip install -e '.[attacks]' in the dwf-lab checkout)")
VERSIONS = ("standard", "rand")
LOGGER = "auto-attack"
SUITE = "pyautoattack (the original AutoAttack, Croce & Hein 2020)"
STAGE_NAMES = {"apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "fab-t": "FAB-T", "square": "Square",
               "apgd-dlr": "APGD-DLR", "fab": "FAB"}


class AutoAttackUnavailableError(ImportError, RuntimeError):
    """pyautoattack is not installed (or fails to import); the message says how to install it (a
    RuntimeError too, so the command line shows it as its one-line error)."""


def _library():
    try:
        import pyautoattack
        from pyautoattack import checks
        from pyautoattack.autopgd_base import APGDAttack
    except Exception as err:   # ImportError, or a broken install raising something else
        raise AutoAttackUnavailableError(f"{INSTALL_HINT} (import failed: {err})") from err
    return pyautoattack, checks, APGDAttack


def available() -> bool:
    """True when pyautoattack imports (tests and notebooks skip the official suite otherwise)."""
    try:
        _library()
        return True
    except AutoAttackUnavailableError:
        return False


@dataclass(frozen=True)
class Budget:
    """A reduced budget: each field that is not None replaces the library's standard value.

    Only for CPU tests and small profiles: a result run with any value other than the
    library's is labelled "reduced budget", never "standard" (a value equal to the library's
    changes nothing). ``n_iter``: APGD and FAB iterations (standard 100); ``n_target_classes``:
    APGD-T's and FAB-T's targets (9); ``n_queries``: Square's queries (5,000); ``eot_iter``:
    draws per gradient in the rand version (20).
    """
    n_iter: int | None = None
    n_target_classes: int | None = None
    n_queries: int | None = None
    eot_iter: int | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"AutoAttack budget {f.name} must be a positive integer or None "
                                 f"(the standard value), got {v!r}")


@dataclass
class AutoAttackResult:
    """What :func:`official_autoattack` returns (see the module docstring)."""
    correct: torch.Tensor          # (N,) bool: robust under the whole suite
    stages: dict                   # {"clean": %, "<attack>": % after it, ...} in the order run
    settings: dict                 # what ran, with "standard": bool
    x_adv: torch.Tensor            # the adversarial images (the clean image where none was found)
    rechecked: int = 0             # images the library called robust that the recomputation did not
    seconds: dict = dataclasses.field(default_factory=dict)   # each attack's seconds, as the library logs them

    @property
    def robust(self) -> float:
        """Robust accuracy in percent (from ``correct``)."""
        return 100.0 * self.correct.float().mean().item() if len(self.correct) else 0.0


def label(settings: dict) -> str:
    """How a result is named in tables: "AutoAttack (official, standard)", or "... reduced budget"."""
    if settings.get("standard"):
        return f"AutoAttack (official, {settings.get('version')})"
    return f"AutoAttack (official {settings.get('version')}, reduced budget: NOT the standard suite)"


def library_settings(aa) -> dict:
    """The budgets of a configured ``pyautoattack.AutoAttack``, read off its attack objects."""
    out = {"apgd_iter": aa.apgd.n_iter, "apgd_restarts": aa.apgd.n_restarts, "apgd_eot_iter": aa.apgd.eot_iter,
           "apgd_rho": aa.apgd.thr_decr}
    attacks = list(aa.attacks_to_run)
    if "apgd-t" in attacks:
        out.update(apgd_t_iter=aa.apgd_targeted.n_iter, apgd_t_targets=aa.apgd_targeted.n_target_classes,
                   apgd_t_restarts=aa.apgd_targeted.n_restarts)
    if "fab-t" in attacks or "fab" in attacks:
        out.update(fab_iter=aa.fab.n_iter, fab_targets=aa.fab.n_target_classes, fab_restarts=aa.fab.n_restarts)
    if "square" in attacks:
        out.update(square_queries=aa.square.n_queries, square_p_init=aa.square.p_init,
                   square_restarts=aa.square.n_restarts)
    return out


def _set_iterations(attack, n_iter: int, apgd_class) -> None:
    """Give an APGD object ``n_iter`` iterations with the checkpoints the library derives from it
    (read off a fresh object, so the library's own formulas are used, not copied here)."""
    probe = apgd_class(None, n_iter=n_iter, eps=float(attack.eps), norm=attack.norm)
    for name in ("n_iter", "n_iter_orig", "n_iter_2", "n_iter_min", "size_decr"):
        setattr(attack, name, getattr(probe, name))


def _apply_budget(aa, budget: Budget, apgd_class) -> None:
    if budget.n_iter is not None:
        _set_iterations(aa.apgd, budget.n_iter, apgd_class)
        _set_iterations(aa.apgd_targeted, budget.n_iter, apgd_class)
        aa.fab.n_iter = budget.n_iter
    if budget.n_target_classes is not None:
        aa.apgd_targeted.n_target_classes = budget.n_target_classes
        aa.fab.n_target_classes = budget.n_target_classes
    if budget.n_queries is not None:
        aa.square.n_queries = budget.n_queries
    if budget.eot_iter is not None and aa.version == "rand":
        aa.apgd.eot_iter = budget.eot_iter


# ------------------------------------------------------------ the log --
_PERTURBED = re.compile(r"^(?P<attack>[\w-]+) - \d+/\d+ - (?P<k>\d+) out of \d+ successfully perturbed$")
_AFTER = re.compile(r"^robust accuracy after (?P<attack>[\w-]+): (?P<pct>[\d.]+)%(?: \(total time (?P<t>[\d.]+) s\))?")
_INITIAL = re.compile(r"^initial accuracy: (?P<pct>[\d.]+)%")


class _Capture(logging.Handler):
    """Everything the library logs: images broken per attack, the accuracies it reports, warnings."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.broken: dict[str, int] = {}
        self.after: dict[str, float] = {}
        self.total_s: dict[str, float] = {}
        self.initial: float | None = None
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            if msg not in self.warnings:
                self.warnings.append(msg)
            return
        if m := _PERTURBED.match(msg):
            self.broken[m["attack"]] = self.broken.get(m["attack"], 0) + int(m["k"])
        elif m := _AFTER.match(msg):
            self.after[m["attack"].lower()] = float(m["pct"])
            if m["t"] is not None:
                self.total_s[m["attack"].lower()] = float(m["t"])
        elif m := _INITIAL.match(msg):
            self.initial = float(m["pct"])


class _Quiet:
    """The library's log into a :class:`_Capture` only, torch's generators and the trace function
    as they were before, and the library's per-process "dynamic defense" counters reset."""

    def __init__(self, checks, devices):
        self.checks, self.devices = checks, devices

    def __enter__(self) -> _Capture:
        self.logger = logging.getLogger(LOGGER)
        self.saved = (self.logger.level, self.logger.propagate, list(self.logger.handlers))
        self.capture = _Capture()
        self.logger.handlers = [self.capture]
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False
        self.trace = sys.gettrace()
        self.rng = torch.random.fork_rng(devices=self.devices)
        self.rng.__enter__()
        for k in self.checks.funcs:      # counts of gradient calls in a forward pass, kept per process
            self.checks.funcs[k] = 0
        return self.capture

    def __exit__(self, *exc):
        self.rng.__exit__(*exc)
        sys.settrace(self.trace)
        level, propagate, handlers = self.saved
        self.logger.handlers = handlers
        self.logger.setLevel(level)
        self.logger.propagate = propagate
        return False


def _stages(log: _Capture, attacks: list[str], robust_lib: int, n: int) -> dict:
    """The robust accuracy (%) after each stage, from the counts in the log, checked twice."""
    broken = [log.broken.get(a, 0) for a in attacks]
    clean = robust_lib + sum(broken)
    why = None
    if log.initial is None:
        why = "no initial accuracy in its log"
    elif abs(100.0 * clean / n - log.initial) > 0.006:
        why = (f"its log reports a clean accuracy of {log.initial}%, but its verdicts and the images each "
               f"attack broke add up to {100.0 * clean / n:.2f}%")
    else:
        left = clean
        for a, k in zip(attacks, broken):
            left -= k
            if a in log.after and abs(100.0 * left / n - log.after[a]) > 0.006:
                why = f"after {a} its log reports {log.after[a]}%, its counts give {100.0 * left / n:.2f}%"
    if why:
        raise RuntimeError(f"could not read AutoAttack's stage by stage accuracies from pyautoattack ({why}): "
                           "this kit reads the log of pyautoattack 0.2.0; pin that version "
                           "(pip install pyautoattack==0.2.0)")
    out, left = {"clean": 100.0 * clean / n}, clean
    for a, k in zip(attacks, broken):
        left -= k
        out[a] = 100.0 * left / n
    return out


# ---------------------------------------------------------- the attack --
def _check_request(version: str, norm: str, seed, budget) -> "Budget":
    if version not in VERSIONS:
        raise ValueError(f"AutoAttack version must be one of {', '.join(VERSIONS)}, got {version!r}: "
                         "'standard' for a deterministic model, 'rand' for one with a random forward pass")
    if norm != "Linf":
        raise ValueError(f"the kit's threat model is L-inf: norm must be 'Linf', got {norm!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer (the library would otherwise seed from the clock), got {seed!r}")
    budget = budget or Budget()
    if not isinstance(budget, Budget):
        raise ValueError(f"budget must be None (standard) or an autoattack.Budget, got {type(budget).__name__}")
    return budget


def _configured(model, device, eps: float, norm: str, version: str, seed: int, budget: "Budget"):
    """(the library's AutoAttack with ``budget`` applied, its settings, the library's own standard ones)."""
    pyautoattack, _, apgd_class = _library()

    def make():
        return pyautoattack.AutoAttack(model, device=device, eps=float(eps), norm=norm, seed=int(seed),
                                       version=version)
    aa = make()
    _apply_budget(aa, budget, apgd_class)
    return aa, library_settings(aa), library_settings(make())


def planned_settings(*, eps: float, norm: str = "Linf", version: str = "standard", seed: int = 0,
                     budget: "Budget | None" = None) -> dict:
    """The settings :func:`official_autoattack` will record for this request, known before it runs (what a
    stored result is compared with): suite, version, norm, eps, seed, attacks, budget, standard, library."""
    budget = _check_request(version, norm, seed, budget)
    pyautoattack = _library()[0]
    with _Quiet(_library()[1], []):
        aa, used, standard = _configured(None, "cpu", eps, norm, version, seed, budget)
    return {"suite": SUITE, "version": version, "norm": norm, "eps": float(eps), "seed": int(seed),
            "attacks": list(aa.attacks_to_run), "budget": used, "standard": used == standard,
            "pyautoattack": getattr(pyautoattack, "__version__", "unknown")}


def official_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf",
                        version: str = "standard", seed: int = 0, batch_size: int = 500, device=None,
                        budget: Budget | None = None) -> AutoAttackResult:
    """The original AutoAttack suite on ``model`` at L-inf radius ``eps`` (pixel units).

    ``version``: "standard" (deterministic models) or "rand" (a random forward pass: EoT).
    ``seed``: the library's seed (every attack of every batch starts from it). ``batch_size``:
    the library's attack batches. ``device``: default the model's. ``budget``: None, the
    standard suite; a :class:`Budget` with any value other than the library's runs a reduced
    one, labelled so. Returns an :class:`AutoAttackResult` (per-example correctness, the
    accuracy after each stage, the settings that ran); see the module docstring for what is checked.
    """
    budget = _check_request(version, norm, seed, budget)
    _, checks, _ = _library()
    x = check_inputs(x, eps, model)
    check_batch_size(batch_size)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    x, y = x.detach().to(device), y.detach().to(device).long()
    n = len(x)
    settings = planned_settings(eps=eps, norm=norm, version=version, seed=seed, budget=budget)
    attacks = settings["attacks"]
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with _Quiet(checks, cuda) as log, attack_mode(model), torch.random.fork_rng(devices=cuda):
        # the library seeds torch's global generators: fork_rng gives the caller's state back after
        aa, _, _ = _configured(model, device, eps, norm, version, seed, budget)
        aa.verbose = True   # its per-batch counts are how the stages are read (into the capture only)
        if n == 0 or eps == 0:
            x_adv, y_adv = x.clone(), None
        else:
            x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=int(batch_size))
    settings.update(n=n, batch_size=int(batch_size), torch=torch.__version__, device=device.type,
                    library_warnings=log.warnings)
    clean_ok = correctness(model, x, x, y, eps, batch_size)
    if y_adv is None:     # nothing to attack: every stage leaves the clean accuracy
        clean = 100.0 * clean_ok.float().mean().item() if n else 0.0
        return AutoAttackResult(clean_ok, {"clean": clean, **{a: clean for a in attacks}}, settings, x_adv)
    lib_ok = (y_adv == y).to(clean_ok.device)
    try:
        stages = _stages(log, attacks, int(lib_ok.sum()), n)
    except RuntimeError as e:   # the stage-by-stage figures are lost, never the finished per-example result
        stages = {}
        settings["stage_error"] = str(e)
    ok = correctness(model, x_adv, x, y, eps, batch_size)
    rechecked = int((lib_ok & ~ok).sum())
    seconds, before = {}, 0.0
    for a in attacks:
        if a in log.total_s:
            seconds[a], before = round(log.total_s[a] - before, 2), log.total_s[a]
    return AutoAttackResult(lib_ok & ok, stages, settings, x_adv, rechecked, seconds)


def official_square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, max_iter: int = 5000,
                    batch_size: int = 500, seed: int = 0) -> torch.Tensor:
    """The original authors' Square attack alone (``pyautoattack.square``, configured as the standard
    suite configures its Square stage: p_init 0.8, one restart, margin loss), ``max_iter`` queries:
    per-example correctness, checked like every other attack (inside the eps-ball, in [0, 1],
    judged by a fresh pass of the model). It attacks only the images still classified correctly,
    one query per image and iteration, so it is far cheaper than ART's Square on a large model."""
    _library()
    from pyautoattack.square import SquareAttack
    x = check_inputs(x, eps, model)
    check_batch_size(batch_size)
    device = next(model.parameters()).device
    x, y = x.detach().to(device), y.detach().to(device).long()
    if len(x) == 0 or eps == 0:
        return correctness(model, x, x, y, eps, batch_size)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with attack_mode(model), torch.no_grad(), torch.random.fork_rng(devices=cuda):   # it reseeds torch's generators
        atk = SquareAttack(model, p_init=.8, n_queries=int(max_iter), eps=float(eps), norm="Linf", n_restarts=1,
                           seed=int(seed), verbose=False, device=device, resc_schedule=False)
        x_adv = torch.cat([atk.perturb(x[i:i + batch_size], y[i:i + batch_size])
                           for i in range(0, len(x), batch_size)])
    return correctness(model, x_adv, x, y, eps, batch_size)
