"""Which device a profile's ``device`` setting names here: CUDA, an Apple-silicon GPU (``mps``) or the CPU.

No dwf_lab imports: :mod:`dwf_lab.core.precision` (imported by the config) needs it as much as
:mod:`dwf_lab.core.runtime` does."""
import torch


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, else an Apple-silicon GPU (``mps``), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device=cpu")
    if dev.type == "mps" and not mps_available():
        raise RuntimeError(f"device {name!r} requested but no Apple-silicon GPU (mps) is available; use device=cpu")
    return dev
