"""How long a notebook's steps will take on this machine: an estimate, and how it was made.

Work is counted in *passes*: one training step (forward + backward + update) of one ResNet-18
of the run's width on one image. An attack step (forward + backward to the input, no weight
gradients) counts :data:`ATTACK_STEP`, a forward pass :data:`FORWARD`; a mixture counts each
of its experts. So a stage's work is images × epochs × passes per image of its recipe
(:func:`passes_per_image`, Algorithms 1-3 and the baselines) × networks, and an evaluation's
is test images × the attack steps of its protocol × networks.

Seconds per pass come from the run's own records where they can (:func:`measured_rates`):
``stage_time`` events of finished stages (the same kind first, else the run's other stages),
``elapsed_s`` of evaluation records, per-attack ``elapsed_s`` of adaptive results. Where the run
has none, from the fast-path probe a training run logged, else from :func:`probe_throughput`, a
short timed training step of the run's ResNet-18 (about a second on a laptop CPU), cached per
process so notebooks that train right after reuse it. :func:`estimate` returns each step's
seconds and the sentences saying how they were obtained.
"""
import functools
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dwf_lab.core.config import Profile
from dwf_lab.core.precision import evaluation_precision
from dwf_lab.core.runtime import Runtime
from dwf_lab.core.work import ATTACK_STEP, FORWARD
from dwf_lab.course.plan import RunInventory, Step, model_kind
from dwf_lab.data import steps_per_epoch
from dwf_lab.evaluation import keys as K
from dwf_lab.evaluation.adaptive import AdaptiveSettings
from dwf_lab.evaluation.checklist import ChecklistSettings
from dwf_lab.evaluation.protocol import EvalSettings, ablation_eval_settings, protocol_settings
from dwf_lab.evaluation.suite import planned
from dwf_lab.mixture.soe import SoE
from dwf_lab.models.resnet import resnet18
from dwf_lab.pipeline.ablations import same_model_as
from dwf_lab.pipeline.adaptive import gets_gate_attacks
from dwf_lab.training.fast_path import bf16_supported, choose
from dwf_lab.training.recipes import RECIPES
from dwf_lab.training.stages import Stage, baseline_stages, of_kind, plan_stages
from dwf_lab.training.variants import Ablation, CommonSeedStage, variant_profile


# ===================================================================== work ==
def networks(kind: str, p: Profile) -> int:
    """How many ResNet-18s a model of this kind runs per image (its recipe's model; the uniform
    ensemble and ablation variants average the run's experts)."""
    r = RECIPES.get(kind)
    return r.networks(p) if r is not None else p.n_experts if kind == "uniform_ensemble" else 1


def passes_per_image(kind: str, p: Profile) -> float:
    """Passes per clean training image and network, from the recipe of ``kind``
    (:attr:`dwf_lab.training.recipes.Recipe.passes`)."""
    r = RECIPES.get(kind)
    if r is None or r.passes is None:
        raise ValueError(f"no cost model for training kind {kind!r}: its recipe states no passes per image")
    return r.passes(p)


def has_cost_model(kind: str) -> bool:
    r = RECIPES.get(kind)
    return r is not None and r.passes is not None


def train_work(stage: Stage, p: Profile, n_train: int) -> float:
    images = steps_per_epoch(n_train, stage.batch_size) * stage.batch_size * stage.epochs
    return images * passes_per_image(stage.kind, p) * networks(stage.kind, p)


# Before a model is evaluated, the share of test images it classifies correctly (the protocol
# attacks only those) and the share still correct after the first PGD-L run (its later restarts
# attack only those) are not known: these stand in, and the banner says so. (The laptop run's models
# measured 30-68 % and 0-28 %: DWF 55 and 16.)
ASSUMED_CLEAN = 0.6
ASSUMED_SURVIVING = 0.25


def eval_passes(s: EvalSettings, clean: float = 1.0, surviving: float | None = None) -> float:
    """Passes per test image and network of the paper protocol with settings ``s``
    (:func:`dwf_lab.evaluation.protocol.evaluate_model`): a clean pass on every image; on the
    ``clean`` share it classifies correctly, FGSM at each eps and one PGD trajectory that PGD-k is
    read off and the first PGD-L restart continues; the later restarts on the ``surviving`` share
    (default: ``clean``) that every earlier one left correct."""
    surviving = clean if surviving is None else surviving
    per = len(s.fgsm_eps) * (ATTACK_STEP + FORWARD)
    read_at = list(s.pgd_steps) + ([s.long_steps] if s.long and s.long_steps >= 1 else [])
    if read_at:
        per += max(read_at) * ATTACK_STEP + len(read_at) * FORWARD
    if s.long and s.eot_samples > 1:
        per += s.eot_samples * s.long_steps * ATTACK_STEP
    n = FORWARD + clean * per
    if s.long:
        n += surviving * (s.restarts - 1) * (s.long_steps * ATTACK_STEP + FORWARD)
    return n


def record_shares(rec: dict | None) -> tuple[float, float] | None:
    """(clean, surviving) shares of an evaluation record (see :func:`eval_passes`), or None."""
    m = (rec or {}).get("metrics") or {}
    sa = m.get("SA")
    if not isinstance(sa, (int, float)):
        return None
    long = next((m[k.text] for k in K.of(m, "pgd", "a")), m.get("worst-case"))
    surviving = float(long) / 100 if isinstance(long, (int, float)) else float(sa) / 100
    return max(0.0, min(1.0, float(sa) / 100)), max(0.0, min(1.0, surviving))


def eval_work(kind: str, p: Profile, n_test: int, settings: EvalSettings | None = None,
              shares: tuple[float, float] = (ASSUMED_CLEAN, ASSUMED_SURVIVING)) -> float:
    s = settings or protocol_settings(p, kind)
    modes = len(SoE.gradient_modes) if RECIPES.get(kind) and RECIPES[kind].model == "soe" else 1
    return n_test * eval_passes(s, *shares) * networks(kind, p) * modes


def attack_work(key: str, s: AdaptiveSettings, kind: str, p: Profile, n_test: int,
                robust: float = 1.0) -> float:
    """Passes of one adaptive attack (a metric key of :class:`AdaptiveSettings`, its work from the
    attack's registry entry) on ``n_test`` images; ``robust``: the share a cascade still attacks."""
    m = networks(kind, p)
    if key == "SA":
        return n_test * FORWARD * m
    return n_test * s.attack(key).work(s, m, robust)


def checklist_work(kind: str, p: Profile, n_test: int) -> float:
    """Passes of the gradient-masking checklist's own attacks (:mod:`dwf_lab.evaluation.checklist`)."""
    c = ChecklistSettings.from_profile(p)
    n = min(n_test, c.n_examples or n_test)
    per = (c.steps * 2 + c.long_steps * c.long_restarts + len(c.eps_grid) * c.eps_grid_steps) * ATTACK_STEP
    per += c.square_queries * FORWARD
    return n * per * networks(kind, p)


def ablation_work(a: Ablation, p: Profile, inv: RunInventory, seed: int,
                  n_train: int, n_test: int, clean: float = ASSUMED_CLEAN) -> tuple[float, float]:
    """(training passes, evaluation passes) of one ablation variant
    (:func:`dwf_lab.pipeline.ablations.run_variant`)."""
    pv = variant_profile(p, a)
    n = a.experts or p.n_experts
    train = 0.0
    same_as = same_model_as(a, p, lambda name: inv.is_trained(seed, name))
    if a.kind != "none" and same_as is None:
        stage = CommonSeedStage(f"ablation-{a.name}", a.kind, p.mixture_epochs, p.mixture_batch, a.label)
        train = train_work(stage, pv, n_train) / networks(a.kind, pv) * n
    if a.retrain_experts:
        train += sum(train_work(st, pv, n_train) for st in of_kind(plan_stages(pv), "fgsm", "pgd"))
    # read off a stored result of the same model (run_variant's reuse): the run's evaluated DWF;
    # the uniform ensemble, which notebook 07 evaluates before its ablations
    read_off = same_as == "uniform-ensemble" or (same_as is not None and same_as in inv.evaluated(seed))
    return train, 0.0 if read_off else n_test * eval_passes(ablation_eval_settings(p), clean) * n


# ==================================================================== rates ==
@dataclass
class Rate:
    seconds_per_pass: float
    how: str            # one sentence: where the number comes from
    source: str         # "measured" (same kind, this run), "scaled" (other work of this run), "probe"


def _median(values) -> float:
    return statistics.median(values)


def _record_settings(cls, stored: dict | None):
    known = set(cls.__dataclass_fields__)
    try:
        return cls(**{k: (tuple(v) if isinstance(v, list) else v)
                      for k, v in (stored or {}).items() if k in known})
    except (TypeError, ValueError):
        return None


def _robust(rec: dict | None) -> float:
    """The fraction of images the paper protocol left correct (a cascade attacks those); 1 if unknown."""
    v = ((rec or {}).get("metrics") or {}).get("worst-case")
    return max(0.0, min(1.0, float(v) / 100)) if isinstance(v, (int, float)) else 1.0


@dataclass
class MeasuredRates:
    """Seconds per pass measured in this run: per training kind, per evaluated kind, per attack key."""
    train: dict[str, list[tuple[str, float]]]    # kind -> [(stage, seconds/pass)]
    eval: dict[str, list[tuple[str, float]]]
    attack: dict[str, list[tuple[str, float]]]


def measured_rates(p: Profile, inv: RunInventory, n_train: int, n_test: int) -> MeasuredRates:
    stages = {s.name: s for s in plan_stages(p) + baseline_stages(p)}
    train: dict = {}
    for (seed, name), seconds in inv.stage_seconds.items():
        st = stages.get(name)
        if st is not None and inv.is_trained(seed, name) and seconds > 0 and has_cost_model(st.kind):
            train.setdefault(st.kind, []).append((name, seconds / train_work(st, p, n_train)))
    ev: dict = {}
    attack: dict = {}
    for (seed, name), rec in inv.records.items():
        kind = str(rec.get("stage_kind") or model_kind(p, name))
        n = int(rec.get("n_test") or n_test)
        s = _record_settings(EvalSettings, rec.get("settings"))
        elapsed = rec.get("elapsed_s")
        shares = record_shares(rec)
        if s is not None and shares is not None and isinstance(elapsed, (int, float)) and elapsed > 0:
            try:
                ev.setdefault(kind, []).append((name, elapsed / eval_work(kind, p, n, s, shares)))
            except ValueError:
                pass
        info = rec.get("adaptive") or {}
        a = _record_settings(AdaptiveSettings, info.get("settings"))
        for key, sec in (info.get("elapsed_s") or {}).items():
            if a is not None and isinstance(sec, (int, float)) and sec > 0 and key in ("SA", *a.every_attack_name()):
                work = attack_work(key, a, kind, p, a.images(n), _robust(rec))
                attack.setdefault(key, []).append((name, sec / work))
    for seed, variants in inv.ablations.items():
        for name, rec in variants.items():
            elapsed, train_s = rec.get("elapsed_s"), inv.ablation_seconds.get((seed, name))
            n = int(rec.get("n_test") or n_test)
            experts = int(rec.get("experts") or p.n_experts)
            shares = record_shares(rec)
            if isinstance(elapsed, (int, float)) and elapsed > 0 and shares is not None:
                work = n * eval_passes(ablation_eval_settings(p), shares[0]) * experts
                ev.setdefault("ablation", []).append((f"ablation {name}", elapsed / work))
            if train_s and has_cost_model(rec.get("kind")):
                stage = CommonSeedStage(name, rec["kind"], p.mixture_epochs, p.mixture_batch, name)
                work = train_work(stage, p, n_train) / networks(rec["kind"], p) * experts
                train.setdefault(rec["kind"], []).append((f"ablation {name}", train_s / work))
    return MeasuredRates(train, ev, attack)


# -------------------------------------------------------------- the probe --
PROBE_BATCH = 16
PROBE_SECONDS = 0.4    # timed per path (after one warm-up step), at most PROBE_STEPS steps
PROBE_STEPS = 5
PROBE_BUDGET = 2.0     # seconds for the whole probe, beyond one warm-up and one timed step


@functools.lru_cache(maxsize=8)
def probe_throughput(width: float, batch: int, num_classes: int, in_channels: int, size: int,
                     device: str, amp: bool, channels_last: bool, try_bf16: bool,
                     threads: int) -> dict:
    """Images/s of a ResNet-18 training step: one warm-up step, then steps for about
    :data:`PROBE_SECONDS` (:data:`PROBE_BUDGET` in all), in fp32 and, when ``try_bf16`` (a CPU
    whose profile says "auto": the fast path's own probe decides when training starts), with
    bf16 + channels_last, skipped when fp32 alone took more than a second (a busy machine). ``train``: the rate training will
    most likely get (:func:`dwf_lab.training.fast_path.choose`); ``fp32`` and, where measured,
    ``bf16`` (with channels_last): the evaluation attacks run in one of them. About a second on a
    laptop CPU; cached per process."""
    dev = torch.device(device)
    torch.manual_seed(0)
    x = torch.rand(batch, in_channels, size, size, device=dev)
    y = torch.randint(0, num_classes, (batch,), device=dev)
    paths = {"fp32": (False, False)}
    if amp or channels_last:
        paths["profile"] = (amp, channels_last)
    if try_bf16:
        paths["bf16+channels_last"] = (True, True)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    rates, t_all = {}, time.perf_counter()
    for name, (bf16, cl) in paths.items():
        if name != "fp32" and time.perf_counter() - t_all > 1.0:
            break
        model = resnet18(num_classes, width, in_channels).to(dev).train()
        xs = x.contiguous(memory_format=torch.channels_last) if cl else x
        if cl:
            model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        steps, t0 = 0, 0.0
        while steps < 2 or (steps < PROBE_STEPS + 1 and time.perf_counter() - t0 < PROBE_SECONDS
                            and time.perf_counter() - t_all < PROBE_BUDGET):
            if steps == 1:
                sync()
                t0 = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(xs).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        sync()
        rates[name] = batch * (steps - 1) / (time.perf_counter() - t0)
    if "profile" in rates:
        train = "profile"
    elif "bf16+channels_last" in rates:
        train = choose(rates)
    else:
        train = "fp32"
    return {"fp32": rates["fp32"], "train": rates[train], "path": train, "batch": batch,
            **({"bf16": rates["bf16+channels_last"]} if "bf16+channels_last" in rates else {}),
            "seconds": time.perf_counter() - t_all}


def _probe(p: Profile, data, device, threads: int) -> dict:
    rt = Runtime.from_profile(p)
    c, h, _ = data.shape
    try_bf16 = rt.cpu_auto(p) and bf16_supported()
    return probe_throughput(p.width, min(p.expert_batch, PROBE_BATCH), data.num_classes, c, h, str(device),
                            bool(rt.amp), bool(rt.channels_last), try_bf16, threads)


# ================================================================ estimate ==
@dataclass
class StepCost:
    step: Step
    seconds: float
    detail: str          # what was counted, e.g. "5 epochs x 4,992 images"
    rate: Rate | None    # None when the step is done (loaded, not run) or has no estimate
    failed: bool = False  # no cost model for this step: seconds are not counted


def _names(pairs) -> str:
    names = [n for n, _ in pairs]
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


class Estimator:
    """Seconds per pass for each kind of work, from the run's records first, else a probe."""

    def __init__(self, p: Profile, data, inv: RunInventory, device, threads: int):
        self.p, self.data, self.inv, self.device, self.threads = p, data, inv, device, threads
        self.n_train, self.n_test = len(data.x_train), len(data.x_test)
        self.measured = measured_rates(p, inv, self.n_train, self.n_test)
        self._probe: dict | None = None

    def probe(self) -> tuple[dict, str]:
        """Images/s of a training step: ``train`` on the path training takes, ``eval`` on the
        arithmetic the evaluation attacks run in (:func:`dwf_lab.core.precision.evaluation_precision`)."""
        bf16_eval = evaluation_precision(self.p) == "bf16"
        fp = self.inv.fast_path
        if fp and isinstance(fp.get("images_per_s"), dict) and fp.get("choice") in fp["images_per_s"]:
            r = fp["images_per_s"]
            train = float(r[fp["choice"]])
            fp32 = float(r.get("fp32", train))
            rates = {"fp32": fp32, "train": train, "eval": float(r.get("bf16+channels_last", train)) if bf16_eval
                     else max(fp32, float(r.get("fp32+channels_last", fp32)))}
            return rates, (f"the fast-path probe this run logged when it first trained ({train:.0f} "
                           f"images/s, {fp['choice']}, one ResNet-18 training step at width {self.p.width:g}; "
                           f"the attacks run in {'bf16' if bf16_eval else 'fp32'}: {rates['eval']:.0f})")
        if self._probe is None:
            self._probe = _probe(self.p, self.data, self.device, self.threads)
        pr = dict(self._probe)
        pr["eval"] = pr.get("bf16", pr["train"]) if bf16_eval else pr["fp32"]
        return pr, (f"a {pr['seconds']:.1f}-second throughput probe on this machine ({pr['train']:.0f} images/s "
                    f"for one ResNet-18 training step at width {self.p.width:g}, batch {pr['batch']}, "
                    f"{self.threads} thread{'s' if self.threads != 1 else ''}; {pr['eval']:.0f} in "
                    f"{'bf16' if bf16_eval else 'fp32'}, which the attacks use)")

    def shares(self, kind: str) -> tuple[tuple[float, float], str]:
        """(clean, surviving) shares for a model of ``kind`` not yet evaluated: the median of this
        run's evaluated models of that kind, else of all of them, else the assumed ones."""
        found = {k: [sh for sh in (record_shares(r) for r in recs) if sh is not None]
                 for k, recs in self._records_by_kind().items()}
        pool = found.get(kind) or [sh for v in found.values() for sh in v]
        if pool:
            clean, surviving = _median(c for c, _ in pool), _median(v for _, v in pool)
            which = f"{kind} models" if found.get(kind) else "models"
            return (clean, surviving), (f"{clean:.0%} of the images correct and {surviving:.0%} surviving, "
                                        f"as this run's evaluated {which}")
        return (ASSUMED_CLEAN, ASSUMED_SURVIVING), (f"assuming {ASSUMED_CLEAN:.0%} of the images correct "
                                                    f"and {ASSUMED_SURVIVING:.0%} surviving (none evaluated yet)")

    def _records_by_kind(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for (_, name), rec in self.inv.records.items():
            out.setdefault(str(rec.get("stage_kind") or model_kind(self.p, name)), []).append(rec)
        return out

    def _pick(self, table: dict, kind: str, what: str, others: str) -> Rate | None:
        if table.get(kind):
            return Rate(_median(r for _, r in table[kind]), f"{what} measured in this run ({_names(table[kind])})",
                        "measured")
        pairs = [pr for rows in table.values() for pr in rows]
        if pairs:
            return Rate(_median(r for _, r in pairs), f"scaled from this run's {others} ({_names(pairs)})", "scaled")
        return None

    def train_rate(self, kind: str) -> Rate:
        rate = self._pick(self.measured.train, kind, f"time per pass of {kind} training", "training times")
        if rate is not None:
            return rate
        pr, how = self.probe()
        return Rate(1 / pr["train"], how, "probe")

    def eval_rate(self, kind: str) -> Rate:
        rate = self._pick(self.measured.eval, kind, f"time per attack step of {kind} evaluations",
                          "evaluation times")
        if rate is None:
            rate = self._pick(self.measured.attack, "", "", "adaptive-attack times")
        if rate is not None:
            return rate
        pr, how = self.probe()
        return Rate(1 / pr["eval"], how, "probe")

    def attack_rate(self, key: str) -> Rate:
        rate = self._pick(self.measured.attack, key, f"time per step of {key}", "adaptive-attack times")
        return rate if rate is not None else self.eval_rate("")

    # ---- one step
    def safe_cost(self, step: Step) -> StepCost:
        """:meth:`cost`, or, where the step has no cost model, no estimate and a one-line reason
        (the banner says so; it never stops a notebook)."""
        try:
            return self.cost(step)
        except (ValueError, KeyError, TypeError) as e:
            return StepCost(step, 0.0, f"no estimate: {e}", None, failed=True)

    def cost(self, step: Step) -> StepCost:
        p, n_train, n_test = self.p, self.n_train, self.n_test
        if step.done:
            return StepCost(step, 0.0, "", None)
        if step.action == "train":
            st = step.stage
            images = steps_per_epoch(n_train, st.batch_size) * st.batch_size
            m = networks(st.kind, p)
            detail = (f"{st.epochs} epoch{'s' if st.epochs != 1 else ''} x {images:,} images"
                      + (f", {m} networks" if m > 1 else ""))
            rate = self.train_rate(st.kind)
            return StepCost(step, train_work(st, p, n_train) * rate.seconds_per_pass, detail, rate)
        if step.action == "evaluate":
            rate = self.eval_rate(step.kind)
            shares, assumed = self.shares(step.kind)
            return StepCost(step, eval_work(step.kind, p, n_test, shares=shares) * rate.seconds_per_pass,
                            f"{n_test:,} test images, the paper's protocol ({assumed})", rate)
        if step.action == "attack":
            s = AdaptiveSettings.from_profile(p)
            robust = _robust(self.inv.records.get((step.seed, step.name)))
            seconds, rate = 0.0, None
            for key in step.missing:
                rate = self.attack_rate(key)
                seconds += attack_work(key, s, step.kind, p, s.images(n_test), robust) * rate.seconds_per_pass
            if step.checklist:
                rate = rate or self.attack_rate("")
                seconds += checklist_work(step.kind, p, n_test) * rate.seconds_per_pass
            what = ", ".join(step.missing) if step.missing else ""
            what += ("; " if what else "") + ("the gradient-masking checklist" if step.checklist else "")
            return StepCost(step, seconds, what, rate)
        if step.action == "converge":
            s = AdaptiveSettings.from_profile(p)
            twice = s.twice()
            robust = _robust(self.inv.records.get((step.seed, step.name)))
            seconds, rate = 0.0, None
            for a in planned(s, gets_gate_attacks(step.kind) or step.kind):
                if a.worst_case:
                    rate = self.attack_rate(a.key(s))
                    seconds += (s.images(n_test) * a.work(twice, networks(step.kind, p), robust)
                                * rate.seconds_per_pass)
            return StepCost(step, seconds, "every attack of its worst case at twice the budget", rate)
        if step.action == "ablation":
            train, ev = ablation_work(step.ablation, p, self.inv, step.seed, n_train, n_test,
                                      self.shares("mixture")[0][0])
            t_rate, e_rate = self.train_rate(step.ablation.kind if train else "mixture"), self.eval_rate("ablation")
            detail = ("trains a mixture, then PGD-20" if train else "no training, PGD-20" if ev
                      else "read off the stored result of the same model")
            return StepCost(step, train * t_rate.seconds_per_pass + ev * e_rate.seconds_per_pass, detail,
                            t_rate if train else e_rate)
        raise ValueError(f"no cost model for a step of action {step.action!r}")


def estimate(steps: list[Step], p: Profile, data, inv: RunInventory, device="cpu",
             threads: int | None = None) -> list[StepCost]:
    """Each step's estimated seconds (0 for steps already done) and how they were obtained."""
    est = Estimator(p, data, inv, device, threads if threads is not None else torch.get_num_threads())
    return [est.safe_cost(s) for s in steps]
