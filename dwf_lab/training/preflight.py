"""What a command checks before it touches a run folder (``python -m dwf_lab train/run/...``): the
device the profile names exists here, the data holds at least one batch for every stage it trains,
the mixture has experts to route between, and the models fit in this machine's memory at the
profile's width. Each problem is one ValueError / RuntimeError line saying which setting to change;
nothing has been written when it is raised.

The memory check is an estimate from below, so it refuses only what cannot fit: the expert's
parameter count (the model built on PyTorch's ``meta`` device: no memory), times weights, gradients
and momentum, plus one float per activation of a ResNet-18 per image of a batch (about 1.2 million
at width 1 on 32x32 images); the mixture stage holds all its experts (and trains them on three times
its batch, which the estimate leaves out). Compared with the machine's whole memory (the GPU's, or the RAM).
"""
import os
from pathlib import Path

import torch

from dwf_lab.core.config import Profile
from dwf_lab.core.device import resolve_device
from dwf_lab.data import ImageData, steps_per_epoch
from dwf_lab.store.checkpoints import read_metadata
from dwf_lab.training.builders import build_expert
from dwf_lab.training.recipes import recipe
from dwf_lab.training.stages import Stage, baseline_stages, select_stages

# commands that train, and the stages each one trains
TRAINS = ("train", "run", "course", "baselines", "ablations")
ACTIVATIONS_PER_IMAGE = 1.2e6   # floats a CIFAR ResNet-18 keeps per 32x32 image at width 1 (a lower bound)


def check_device(p: Profile) -> torch.device:
    """The device ``p.device`` names, if this machine has it; else one RuntimeError line."""
    dev = resolve_device(p.device)   # "device 'cuda' requested but CUDA is not available; use device=cpu"
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise RuntimeError(f"device {p.device!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}; "
                           "set another (--set device=cuda:0) or device=auto")
    return dev


def _batch_setting(st: Stage) -> str:
    return "mixture_batch" if recipe(st.kind).model == "mixture" else "expert_batch"


def check_batches(p: Profile, data: ImageData, stages: list[Stage]) -> None:
    """Every stage that trains gets at least one full batch of the training images."""
    n = len(data.x_train)
    for st in stages:
        if st.epochs > 0 and steps_per_epoch(n, st.batch_size) == 0:
            raise ValueError(f"stage {st.name}: the {n} training images are fewer than one batch of "
                             f"{st.batch_size} ({_batch_setting(st)}); raise n_train (--set n_train=...) or "
                             f"lower {_batch_setting(st)}")


def memory_needed(p: Profile, data: ImageData, stages: list[Stage]) -> tuple[int, int, str]:
    """(bytes at least, parameters of one expert, the stage that needs them) to train ``stages``."""
    with torch.device("meta"):
        params = sum(q.numel() for q in build_expert(p, data).parameters())
    c, h, w = data.shape
    per_image = ACTIVATIONS_PER_IMAGE * p.width * (h * w) / 1024
    worst, which = 0, ""
    for st in stages:
        if st.epochs <= 0:
            continue
        models = p.n_experts if recipe(st.kind).model == "mixture" else 1
        images = st.batch_size   # the mixture's step trains on 3x its batch: still a lower bound
        need = int(4 * (3 * params * models + per_image * images * models))
        if need > worst:
            worst, which = need, st.name
    return worst, params, which


def machine_memory(dev: torch.device) -> int | None:
    """The whole memory of ``dev`` in bytes (a GPU's, or this machine's RAM); None when unknown."""
    try:
        if dev.type == "cuda":
            return int(torch.cuda.get_device_properties(dev.index or 0).total_memory)
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None


def check_memory(p: Profile, data: ImageData, stages: list[Stage], dev: torch.device) -> None:
    need, params, stage = memory_needed(p, data, stages)
    have = machine_memory(dev)
    if have is not None and need > have:
        raise ValueError(f"the models do not fit in memory at width {p.width:g}: stage {stage} needs at least "
                         f"{need / 1e9:.1f} GB ({params / 1e6:.1f} million parameters per ResNet-18), this "
                         f"machine's {dev.type} has {have / 1e9:.1f} GB; lower width (--set width=...) or the batch")


def check_same_data(root: Path, data: ImageData) -> None:
    """A run whose finished models were trained on generated data (its dataset could not be loaded
    then, and the kit fell back) is not continued on the real data, nor the other way round."""
    for path in sorted(Path(root).glob("seed-*/models/*.safetensors")):
        try:
            trained_on = read_metadata(path).get("dataset")
        except (OSError, ValueError):
            continue   # a damaged file: the command that loads it says so
        if not isinstance(trained_on, str) or (trained_on == "synthetic") == bool(data.generated):
            continue
        if trained_on == "synthetic":
            raise ValueError(f"the run at {root} was trained on generated data ({path.relative_to(root)} says "
                             f"synthetic: its dataset could not be loaded then), and this command has the real "
                             f"{data.name}. Its models say nothing about {data.name}: start the run over (delete "
                             "the folder, or use another --run NAME)")
        raise ValueError(f"the run at {root} was trained on {trained_on} ({path.relative_to(root)}), but this "
                         f"command could not load it and fell back to generated data ({data.fallback_reason}); "
                         "make the dataset available again (see data/README.md)")


def preflight(p: Profile, data: ImageData, command: str, which: str | None = None,
              root: Path | None = None) -> None:
    """Everything a ``command`` (``--stage which``) on the run folder ``root`` can check before that
    folder is touched."""
    dev = check_device(p)
    if root is not None and Path(root).is_dir():
        check_same_data(root, data)
    if command not in TRAINS:
        return
    stages = baseline_stages(p) if command == "baselines" else select_stages(p, None if command in (
        "run", "course", "ablations") else which)
    if any(recipe(st.kind).model == "mixture" for st in stages) and p.n_fgsm_experts + p.n_pgd_experts < 1:
        raise ValueError("n_fgsm_experts and n_pgd_experts are both 0: the mixture would route between the "
                         "benign expert alone; set at least one of them to 1 or more")
    check_batches(p, data, stages)
    check_memory(p, data, stages, dev)
