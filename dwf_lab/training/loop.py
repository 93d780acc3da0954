"""The one training loop every stage runs: :func:`train_step` and :func:`train_stage`.

One step: the stage's batch (:mod:`dwf_lab.training.recipes`, attacks included), its loss,
backward, an SGD step on a cosine learning rate (:func:`cosine_lr`). :func:`train_stage`
checkpoints, logs and resumes from ``state.safetensors``; a non-finite loss stops it
(:class:`NonFiniteLossError`) with the last good checkpoint kept.

Randomness is derived from (seed, stage, step): the data order from (seed,
epoch), augmentation and the attack draws from (seed, stage, global step). A
run therefore resumes from any checkpoint onto exactly the trajectory it would
have followed, and on CPU with ``deterministic`` set ends bit-identical.
"""
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from dwf_lab.core import distributed
from dwf_lab.core.config import Profile
from dwf_lab.core.io import progress_bar
from dwf_lab.core.runtime import Runtime, compile_for_training, seed_from
from dwf_lab.data import ImageData, iterate_batches, steps_per_epoch
from dwf_lab.store.checkpoints import load_training_state, save_model, save_training_state
from dwf_lab.training.recipes import default_loss, recipe
from dwf_lab.training.stages import Stage


class NonFiniteLossError(FloatingPointError, RuntimeError):
    """Training produced a NaN/inf loss (it diverged): an error of the run, one line naming the stage,
    the epoch and the setting to change; the last good checkpoint is kept."""


# ------------------------------------------------------------- runtime --
# The progress bar's loss/accuracy are read back from the device (a sync) every N steps only.
PROGRESS_EVERY = 50


def cosine_lr(step: int, total: int, base: float) -> float:
    """Cosine annealing over all iterations, from ``base`` down to 0."""
    return 0.5 * base * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


def train_step(kind: str, model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor,
               yb: torch.Tensor, p: Profile, rt: Runtime, gen: torch.Generator,
               gen_dev: torch.Generator, lr: float, forward: Callable | None = None):
    """One update of a stage of ``kind``: its batch (attacks included), loss, backward, step.

    ``forward`` is what the default loss calls for the training forward (the
    model wrapped in DistributedDataParallel and/or torch.compile; default
    ``model``); attacks and custom recipe losses always get the plain module.
    Returns (loss, logits, labels) as device tensors: nothing here waits for the
    device. Shared by :func:`train_stage` and ``benchmarks/bench.py``.
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
            log({"event": "diverged", "stage": stage.name, "epoch": b // spe + 1, "step": b % spe + 1,
                 "lr": p.lr})
            others = [q.stem for q in Path(final_path).parent.glob("*.safetensors")]
            again = (f"this run has finished stages ({', '.join(sorted(others))}) made with lr={p.lr:g}: start "
                     "a new run (--run NAME) with a lower lr" if others else
                     "no stage of this run has finished, so the same command with a lower lr (--set lr=...) "
                     "starts it over")
            amp = " or turn off bf16 (--set amp=off)" if rt.amp else ""
            raise NonFiniteLossError(
                f"training diverged: the loss became NaN or infinite in stage {stage.name!r} at epoch "
                f"{b // spe + 1} (step {b % spe + 1} of {spe}) with lr={p.lr:g}. Lower the learning rate{amp}: "
                f"{again}")

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
