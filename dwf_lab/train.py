"""One training loop; the paper's training recipes are thin specialisations of it.

What each kind trains on, per batch (x, y):

| kind      | inputs                                                          | paper        |
|-----------|-----------------------------------------------------------------|--------------|
| benign    | x                                                               | benign expert|
| fgsm      | FGSM(x; eps ~ U{0.01..0.09})                                    | Algorithm 1  |
| pgd       | PGD(x; eps 8/255, alpha 2/255, steps ~ U{10..50})                | Algorithm 2  |
| fgsm_at   | half FGSM(eps 0.03), half clean                                 | baseline     |
| pgd_at    | half PGD-10, half clean                                         | baseline     |
| gate      | concat(x, FGSM, PGD) against the mixture, experts frozen        | Table 5 gate |
| mixture   | concat(x, FGSM, PGD) against the whole mixture, all trained     | Algorithm 3  |

Attacks are generated with the model in eval mode (BatchNorm running
statistics; PAPER-NOTES.md gap 6), then the update runs in train mode.

Randomness is derived from (seed, stage, step): the data order from (seed,
epoch), augmentation and the attack draws from (seed, stage, global step). A
run therefore resumes from any checkpoint onto exactly the trajectory it would
have followed, and on CPU with ``deterministic`` set ends bit-identical.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from dwf_lab import attacks, distributed
from dwf_lab.checkpoints import (load_training_state, save_model, save_training_state)
from dwf_lab.data import ImageData, iterate_batches, seed_from, steps_per_epoch
from dwf_lab.profiles import Profile
from dwf_lab.progress import progress_bar



class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


@dataclass
class Stage:
    name: str        # e.g. "fgsm-2": file names in the run directory
    kind: str        # one of KINDS
    epochs: int
    batch_size: int  # clean images per step (the mixture trains on 3x this)
    row: str         # the label in the report tables

    @property
    def sid(self) -> int:
        """A stable number for this stage, mixed into its seeds."""
        return zlib.crc32(self.name.encode())


def plan_stages(p: Profile) -> list[Stage]:
    """Every stage of a run, in training order."""
    st = [Stage("benign", "benign", p.expert_epochs, p.expert_batch, "ResNet-18")]
    st += [Stage(f"fgsm-{i}", "fgsm", p.expert_epochs, p.expert_batch, f"FGSM expert {i}")
           for i in range(1, p.n_fgsm_experts + 1)]
    st += [Stage(f"pgd-{i}", "pgd", p.expert_epochs, p.expert_batch, f"PGD expert {i}")
           for i in range(1, p.n_pgd_experts + 1)]
    if p.baselines:
        st += [Stage("fgsm-at", "fgsm_at", p.baseline_epochs, p.expert_batch, "ResNet-18 (FGSM-AT)"),
               Stage("pgd-at", "pgd_at", p.baseline_epochs, p.expert_batch, "ResNet-18 (PGD-AT)")]
    if p.gate_epochs > 0:
        st.append(Stage("gate", "gate", p.gate_epochs, p.mixture_batch, "DWF (gate only)"))
    st.append(Stage("mixture", "mixture", p.mixture_epochs, p.mixture_batch, "DWF"))
    return st


# ------------------------------------------------------------- runtime --
# The progress bar's loss/accuracy are read back from the device (a sync) every N steps only.
PROGRESS_EVERY = 50


@dataclass
class Runtime:
    """Where and how fast: the device and the fast-path switches, resolved.

    ``compile``: wrap the model's training forward in ``torch.compile`` (attacks
    stay eager); a compilation error warns once and training continues eager.
    ``expert_batching``: set on a mixture by :meth:`prepare` (None: leave it;
    profile field ``expert_batching``).
    ``sync_batchnorm``: under torchrun on CUDA, BatchNorm statistics over the
    global batch (the single-process semantics) instead of per rank (profile
    field ``sync_batchnorm``).
    Under ``torchrun`` the device is ``cuda:LOCAL_RANK`` and the process group
    is set up here (``dwf_lab.distributed``).
    """
    device: torch.device
    amp: bool
    channels_last: bool
    compile: bool = False
    expert_batching: str | None = None
    sync_batchnorm: bool = False

    @classmethod
    def from_profile(cls, p: Profile) -> "Runtime":
        dev = distributed.init_from_env(resolve_device(p.device))
        cuda = dev.type == "cuda"
        amp = p.amp == "bf16" or (p.amp == "auto" and cuda)
        cl = p.channels_last == "on" or (p.channels_last == "auto" and cuda)
        if p.num_threads > 0:
            torch.set_num_threads(p.num_threads)
        if p.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=False)
            torch.backends.cudnn.benchmark = False
        elif cuda:
            torch.backends.cudnn.benchmark = True
        return cls(dev, amp, cl, compile=bool(p.compile),
                   expert_batching=p.expert_batching, sync_batchnorm=bool(p.sync_batchnorm))

    @property
    def rank(self) -> int:
        return distributed.rank()

    @property
    def world_size(self) -> int:
        return distributed.world()

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def prepare(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.expert_batching is not None and hasattr(model, "expert_batching"):
            model.expert_batching = self.expert_batching
        return model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def step_generators(self, seed: int, sid: int, g: int) -> tuple[torch.Generator, torch.Generator]:
        """(gen, gen_dev) of global step ``g``: gen (CPU) draws the attack settings, the
        same on every rank; gen_dev draws the attack noise on the device, per rank."""
        gen = torch.Generator().manual_seed(seed_from(seed, sid, g))
        world = self.world_size
        if self.device.type == "cpu" and world == 1:
            return gen, gen
        parts = (seed, sid, g, 1) if world == 1 else (seed, sid, g, 1, self.rank)
        return gen, torch.Generator(self.device).manual_seed(seed_from(*parts))


# ------------------------------------------------------- torch.compile --
_compile_warned = False


def _warn_compile(err: BaseException) -> None:
    global _compile_warned
    if not _compile_warned:
        _compile_warned = True
        warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err)[:300]}); "
                      "training continues eager (set compile=false to silence this).",
                      RuntimeWarning, stacklevel=3)


class _CompiledOrEager:
    """Calls the compiled module; if compiling raises, warns once and stays eager for good."""

    def __init__(self, compiled: Callable, eager: nn.Module):
        self.compiled, self.eager, self.failed = compiled, eager, False

    def __call__(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as err:  # dynamo/inductor errors surface at the first call
                self.failed = True
                _warn_compile(err)
        return self.eager(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.eager, name)


def compile_for_training(module: nn.Module) -> Callable:
    """``torch.compile(module)`` with a clean fallback to ``module`` itself (see _CompiledOrEager)."""
    try:
        compiled = torch.compile(module)
    except Exception as err:
        _warn_compile(err)
        return module
    return _CompiledOrEager(compiled, module)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device=cpu")
    return dev


def cosine_lr(step: int, total: int, base: float) -> float:
    """Cosine annealing over all iterations, from ``base`` down to 0."""
    return 0.5 * base * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


# ------------------------------------------------------- what to train on --
BatchFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Recipe:
    """How one kind of stage trains: what it trains on, and (optionally) its own loss.

    ``make_batch(model, x, y, p, gen, gen_dev) -> (inputs, labels)`` runs with the
    model in whatever mode; attacks put it in eval mode themselves.
    ``loss(model, inputs, labels) -> (loss, logits)`` runs in train mode; the
    default is cross-entropy on the model's logits.
    """
    make_batch: BatchFn
    loss: LossFn | None = None
    gate_only: bool = False


RECIPES: dict[str, Recipe] = {}


def register_recipe(kind: str, make_batch: BatchFn, loss: LossFn | None = None,
                    gate_only: bool = False) -> None:
    RECIPES[kind] = Recipe(make_batch, loss, gate_only)


def _fgsm(model, x, y, eps):
    return attacks.fgsm(model, x, y, eps, check=False)


def _pgd(model, x, y, p: Profile, steps, gen_dev):
    return attacks.pgd(model, x, y, p.pgd_eps, p.pgd_alpha, steps, p.random_start,
                       generator=gen_dev, check=False)


def _benign(model, x, y, p, gen, gen_dev):
    return x, y


def _fgsm_expert(model, x, y, p, gen, gen_dev):              # Algorithm 1
    return _fgsm(model, x, y, attacks.pick(p.fgsm_eps_choices, gen)), y


def _pgd_expert(model, x, y, p, gen, gen_dev):               # Algorithm 2
    return _pgd(model, x, y, p, attacks.pick(p.pgd_steps_choices, gen), gen_dev), y


def _half_adversarial(attack):
    def make(model, x, y, p, gen, gen_dev):                  # FGSM-AT / PGD-AT baselines
        h = int(round(len(x) * p.at_adv_fraction))
        return torch.cat([attack(model, x[:h], y[:h], p, gen_dev), x[h:]]), y
    return make


def _mixed_batch(model, x, y, p, gen, gen_dev):              # Algorithm 3
    x_f = _fgsm(model, x, y, attacks.pick(p.fgsm_eps_choices, gen))
    x_p = _pgd(model, x, y, p, attacks.pick(p.pgd_steps_choices, gen), gen_dev)
    return torch.cat([x, x_f, x_p]), torch.cat([y, y, y])


register_recipe("benign", _benign)
register_recipe("fgsm", _fgsm_expert)
register_recipe("pgd", _pgd_expert)
register_recipe("fgsm_at", _half_adversarial(lambda m, x, y, p, g: _fgsm(m, x, y, p.fgsm_at_eps)))
register_recipe("pgd_at", _half_adversarial(lambda m, x, y, p, g: _pgd(m, x, y, p, p.pgd_at_steps, g)))
register_recipe("gate", _mixed_batch, gate_only=True)
register_recipe("mixture", _mixed_batch)


def recipe(kind: str) -> Recipe:
    if kind not in RECIPES:
        raise ValueError(f"unknown training kind {kind!r}; known: {sorted(RECIPES)}")
    return RECIPES[kind]


def training_batch(kind: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, p: Profile,
                   gen: torch.Generator, gen_dev: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and labels of one update, per the stage's recipe (table in the module doc)."""
    return recipe(kind).make_batch(model, x, y, p, gen, gen_dev)


def default_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    logits = model(x)
    return F.cross_entropy(logits.float(), y), logits


def train_step(kind: str, model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor,
               yb: torch.Tensor, p: Profile, rt: Runtime, gen: torch.Generator,
               gen_dev: torch.Generator, lr: float, forward: Callable | None = None):
    """One update of a stage of ``kind``: its batch (attacks included), loss, backward, step.

    ``forward`` is what the default loss calls for the training forward (the
    model wrapped in DistributedDataParallel and/or torch.compile; default
    ``model``); attacks and custom recipe losses always get the plain module.
    Returns (loss, logits, labels) as device tensors: nothing here waits for the
    device. Shared by :func:`train_stage` and ``dwf_lab.bench``.
    """
    rec = recipe(kind)
    xb = rt.inputs(xb)
    with rt.autocast():
        xin, yin = rec.make_batch(model, xb, yb, p, gen, gen_dev)
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr
        if rec.loss is None:
            loss, logits = default_loss(forward or model, xin, yin)
        else:
            if rt.world_size > 1:        # no DDP on this path: sync BN statistics by hand
                distributed.broadcast_buffers_(model)
            loss, logits = rec.loss(model, xin, yin)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if rec.loss is not None and rt.world_size > 1:
        distributed.average_gradients_([q for group in opt.param_groups for q in group["params"]])
    opt.step()
    return loss, logits, yin


def wrap_for_update(model: nn.Module, kind: str, rt: Runtime) -> Callable:
    """The module the training forward of the default loss goes through: DDP under
    torchrun, then torch.compile when asked. Recipes with their own loss get ``model``."""
    if recipe(kind).loss is not None:
        return model
    fwd: Callable = model
    if rt.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        cuda = rt.device.type == "cuda"
        fwd = DDP(model, device_ids=[rt.device.index] if cuda else None,
                  output_device=rt.device.index if cuda else None)
    if rt.compile:
        fwd = compile_for_training(fwd)
    return fwd


def trainable_parameters(model: nn.Module, kind: str) -> list[nn.Parameter]:
    if recipe(kind).gate_only:
        if not hasattr(model, "set_frozen"):
            raise TypeError("the gate-only phase needs a MixtureOfExperts")
        model.set_frozen(True)
        return list(model.gate.parameters())
    if hasattr(model, "set_frozen"):
        model.set_frozen(False)
    return [p for p in model.parameters()]


# ------------------------------------------------------------------ loop --
def train_stage(model: nn.Module, data: ImageData, stage: Stage, p: Profile, *, seed: int,
                ckpt_dir: Path, final_path: Path, runtime: Runtime | None = None,
                log: Callable[[dict], None] | None = None, progress: bool = True,
                stop_after_steps: int | None = None) -> nn.Module:
    """Train ``model`` for one stage, resuming from ``ckpt_dir/state.safetensors`` if present.

    Writes a training checkpoint every ``p.ckpt_every`` steps and at every epoch
    end, an ``epoch-NNN`` model checkpoint per epoch, and the finished model at
    ``final_path`` (whose presence marks the stage as done). A NaN/inf loss
    raises ``NonFiniteLossError`` naming stage, epoch and step; checkpoints are
    only written after the loss has been checked, so the last one stays good.
    ``stop_after_steps`` ends the call early (tests of resume).
    """
    rt = runtime or Runtime.from_profile(p)
    world, rank, main = rt.world_size, rt.rank, rt.rank == 0
    log = (log or (lambda rec: None)) if main else (lambda rec: None)
    ckpt_dir = Path(ckpt_dir)
    state_path = ckpt_dir / "state.safetensors"
    if stage.batch_size % world:
        raise ValueError(f"stage {stage.name}: its batch of {stage.batch_size} does not split over "
                         f"{world} processes; use a batch size divisible by {world}")
    model = rt.prepare(model)
    if rt.sync_batchnorm and world > 1 and rt.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)   # same parameters and buffers
    params = trainable_parameters(model, stage.kind)
    fused = rt.device.type == "cuda"
    opt = torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay,
                          **({"fused": True} if fused else {}))
    x_all, y_all = data.x_train, data.y_train
    if p.data_on_device:
        x_all, y_all = x_all.to(rt.device), y_all.to(rt.device)
    spe = steps_per_epoch(len(x_all), stage.batch_size)
    if spe == 0:
        raise ValueError(f"stage {stage.name}: {len(x_all)} training images are fewer than "
                         f"one batch of {stage.batch_size}; lower the batch size or add data")
    total = stage.epochs * spe
    epoch, start_step = 0, 0
    if state_path.exists():                      # every rank loads the same state
        meta = load_training_state(state_path, model, opt)
        epoch, start_step = meta["progress"]["epoch"], meta["progress"]["next_step"]
        log({"event": "resume", "stage": stage.name, "epoch": epoch, "step": start_step})
    forward = wrap_for_update(model, stage.kind, rt)
    meta_common = {"stage": stage.name, "stage_kind": stage.kind, "seed": seed, "dataset": data.name,
                   "training": {k: v for k, v in p.to_dict().items()}, "row": stage.row}

    def once(write: Callable[[], None]) -> None:
        """Files are written by rank 0; every rank waits until they are there."""
        if main:
            write()
        distributed.barrier()

    def save_state(ep: int, nxt: int):
        once(lambda: save_training_state(state_path, model, opt,
                                         {"epoch": ep, "next_step": nxt, "global_step": ep * spe + nxt},
                                         meta_common))

    # -1, or the first global step whose loss was not finite; kept on the device (no sync per step)
    bad_step = torch.full((), -1, dtype=torch.long, device=rt.device)

    def check_finite(ep: int):
        b = distributed.first_bad_step(bad_step)
        if b >= 0:
            raise NonFiniteLossError(
                f"non-finite loss in stage {stage.name!r}, epoch {b // spe + 1}, step {b % spe + 1} "
                f"(global step {b}); the last good checkpoint is kept at {state_path}. Lower the "
                "learning rate or turn off bf16 (amp=off) and re-run the same command to resume.")

    done_steps = 0
    bar = progress_bar(total=total, initial=epoch * spe + start_step, desc=stage.name,
                       disable=not (progress and main))
    try:
        while epoch < stage.epochs:
            t0 = time.time()
            loss_sum = torch.zeros((), device=rt.device)
            correct = torch.zeros((), device=rt.device)
            seen = 0
            batches = iterate_batches(x_all, y_all, stage.batch_size, shuffle=True,
                                      augment=data.augment, seed=seed_from(seed, stage.sid),
                                      epoch=epoch, start_step=start_step, device=rt.device,
                                      rank=rank, world_size=world)
            for step, xb, yb in batches:
                g = epoch * spe + step
                gen, gen_dev = rt.step_generators(seed, stage.sid, g)
                loss, logits, yin = train_step(stage.kind, model, opt, xb, yb, p, rt, gen, gen_dev,
                                               cosine_lr(g, total, p.lr), forward)
                with torch.no_grad():
                    bad_step.masked_fill_((bad_step < 0) & ~torch.isfinite(loss), g)
                    loss_sum += loss.detach() * len(yin)
                    correct += (logits.argmax(1) == yin).sum()
                seen += len(yin)
                done_steps += 1
                bar.update(1)
                if not bar.disable and ((step + 1) % PROGRESS_EVERY == 0 or step + 1 == spe):
                    bar.set_postfix(epoch=f"{epoch + 1}/{stage.epochs}",   # reads the device back
                                    loss=f"{float(loss_sum) / seen:.3f}",
                                    acc=f"{float(correct) / seen:.3f}", refresh=False)
                if p.ckpt_every and (g + 1) % p.ckpt_every == 0 and step + 1 < spe:
                    check_finite(epoch)
                    save_state(epoch, step + 1)
                if stop_after_steps is not None and done_steps >= stop_after_steps:
                    check_finite(epoch)
                    if step + 1 < spe:
                        save_state(epoch, step + 1)
                    else:
                        save_state(epoch + 1, 0)
                    return model
            check_finite(epoch)
            totals = torch.stack([loss_sum, correct.to(loss_sum.dtype)])
            distributed.all_reduce_sum_(totals)
            seen_all = seen * world
            rec = {"event": "epoch", "stage": stage.name, "epoch": epoch + 1,
                   "train_loss": float(totals[0]) / max(1, seen_all),
                   "train_acc": float(totals[1]) / max(1, seen_all),
                   "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0,
                   "images": seen_all}
            epoch, start_step = epoch + 1, 0
            save_state(epoch, 0)
            if p.keep_epoch_checkpoints:
                once(lambda: save_model(ckpt_dir / f"epoch-{epoch:03d}.safetensors", model,
                                        {**meta_common, "epoch": epoch, "metrics": rec}))
            log(rec)
    finally:
        bar.close()
    if hasattr(model, "set_frozen"):
        model.set_frozen(False)
    once(lambda: save_model(final_path, model, {**meta_common, "epochs": stage.epochs,
                                                "finished": True}))
    log({"event": "stage_done", "stage": stage.name})
    return model.eval()
