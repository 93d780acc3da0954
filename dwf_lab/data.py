"""Datasets as tensors in [0, 1], class-stratified subsets, augmentation, batches.

One function, :func:`load_dataset`, returns every dataset the kit uses as an
:class:`ImageData`: four CPU tensors (images float32 in [0, 1], NCHW; labels
int64) plus what the rest of the kit needs to know about them (normalization
key, augmentation mode, where the data came from).

Where the data comes from:

- ``"cifar10"``: torchvision's CIFAR-10 in the cache directory (:func:`data_dir`,
  env ``DWF_DATA_DIR``) if it is there; else the real CIFAR-10 subset file named
  by env ``DWF_CIFAR10_SUBSET`` if the requested sizes fit in it; else a
  torchvision download (when allowed). No network and no subset: a
  :class:`DatasetUnavailableError` that says how to get the data, or, with
  ``fallback="synthetic"``, a loud warning and generated data -- but only when
  nothing was asked for: a subset file or data directory set in the environment
  that cannot be used is an :class:`UnusableDatasetError` (never a fallback).
- ``"cifar10-subset"``: only the subset file (6,102 real images, see
  ``data/README.md``).
- ``"svhn"``, ``"mnist"``: torchvision, same rules (no subset).
- ``"synthetic"``: generated offline: 10 classes of smooth colour patterns with
  per-image shifts, contrast, brightness, a faint pattern of another class and
  pixel noise. A small CNN learns it in seconds, and eps = 8/255 attacks bite.

Randomness is explicit everywhere: subsets are drawn from ``seed``,
:func:`augment_batch` takes a ``torch.Generator``, and :func:`iterate_batches`
derives the epoch order from (seed, epoch) and each batch's augmentation from
(seed, epoch, step) via :func:`~dwf_lab.core.runtime.seed_from` -- so resuming an epoch at any step
reproduces the uninterrupted run exactly.
"""
import dataclasses
import hashlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from dwf_lab.core.config import canonical_dataset
from dwf_lab.core.runtime import seed_from

DATA_DIR_ENV = "DWF_DATA_DIR"
SUBSET_ENV = "DWF_CIFAR10_SUBSET"


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


DIGIT_CLASSES = tuple(str(i) for i in range(10))
SYNTHETIC_CLASSES = tuple(f"class{i}" for i in range(10))
SYNTHETIC_DEFAULT_SIZES = (2000, 500)  # (n_train, n_test) when not given
AUGMENT_MODES = ("crop_flip", "none")


class DatasetUnavailableError(RuntimeError):
    """A dataset is neither on disk nor downloadable; the message says how to get it."""


class UnusableDatasetError(DatasetUnavailableError):
    """A dataset file or directory that was asked for (``$DWF_CIFAR10_SUBSET``, ``$DWF_DATA_DIR``)
    cannot be used -- missing, unreadable, corrupt, wrong shape or dtype, labels outside the
    classes, not writable -- or data on disk is corrupt. Never replaced by generated data."""


# ------------------------------------------------------------------ hashes --
TEST_SET_HASHED = ("sha256 of the test images as little-endian float32 (N, C, H, W) in C order, and of the "
                   "labels as little-endian int64: the run keeps no indices of the images it drew, so the "
                   "images' bytes are hashed")


def images_sha256(x: torch.Tensor) -> str:
    """sha256 of images as little-endian float32 (N, C, H, W) in C order: the same for the same
    values in any float dtype, device or memory layout (:data:`TEST_SET_HASHED`)."""
    a = x.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False)
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def labels_sha256(y: torch.Tensor) -> str:
    """sha256 of labels as little-endian int64 (:data:`TEST_SET_HASHED`)."""
    return hashlib.sha256(np.ascontiguousarray(y.detach().cpu().numpy().astype("<i8")).tobytes()).hexdigest()


# --------------------------------------------------------------- container --
@dataclass
class ImageData:
    """A train/test split as tensors: images float32 in [0, 1] (N, C, H, W), labels int64."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    norm_key: str  # for dwf_lab.models.normalization_for
    augment: str  # "crop_flip" or "none" (see augment_batch)
    source: str  # human-readable provenance
    generated: bool = False  # synthetic images, not a real dataset
    fallback_reason: str | None = None  # set when generated data stands in for the dataset asked for

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device) -> "ImageData":
        """A copy with the four tensors on ``device`` (e.g. to keep a dataset GPU-resident)."""
        return dataclasses.replace(
            self, x_train=self.x_train.to(device), y_train=self.y_train.to(device),
            x_test=self.x_test.to(device), y_test=self.y_test.to(device))

    def test_set_sha256(self) -> dict[str, str]:
        """The test split's hashes, {"test_images_sha256", "test_labels_sha256"} (:data:`TEST_SET_HASHED`)."""
        return {"test_images_sha256": images_sha256(self.x_test), "test_labels_sha256": labels_sha256(self.y_test)}

    def describe(self) -> dict:
        """A JSON-able summary: name, source, sizes, image shape, per-class counts."""
        def counts(y: torch.Tensor) -> dict[str, int]:
            c = torch.bincount(y.cpu(), minlength=self.num_classes).tolist()
            return {name: int(k) for name, k in zip(self.classes, c)}
        return {
            "name": self.name, "source": self.source,
            "n_train": int(self.x_train.shape[0]), "n_test": int(self.x_test.shape[0]),
            "shape": list(self.shape), "num_classes": self.num_classes,
            "norm_key": self.norm_key, "augment": self.augment,
            "generated": self.generated, "fallback_reason": self.fallback_reason,
            "train_class_counts": counts(self.y_train),
            "test_class_counts": counts(self.y_test),
        }


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed_from(*parts))


# ------------------------------------------------------------------- paths --
def data_dir() -> Path:
    """The dataset cache: $DWF_DATA_DIR, else <repo>/data in a checkout, else ./data."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[1]
    if any((repo / marker).exists() for marker in (".git", "pyproject.toml", "data/README.md")):
        return repo / "data"
    return Path.cwd() / "data"


def subset_path() -> Path | None:
    """The CIFAR-10 subset file named by $DWF_CIFAR10_SUBSET; None when unset."""
    env = os.environ.get(SUBSET_ENV)
    if not env:
        return None
    path = Path(env).expanduser()
    if not path.is_file():
        what = "a directory, not a file" if path.is_dir() else "no file"
        raise UnusableDatasetError(
            f"{SUBSET_ENV} is set to {env!r}, but there is {what} at {path.resolve()}. "
            f"Point {SUBSET_ENV} at a cifar10-subset.npz (see data/README.md), "
            "or unset it.")
    return path


def _dir_problem(root: Path) -> str | None:
    """Why a data directory cannot receive a download (not a directory, not writable), or None."""
    if root.exists() and not root.is_dir():
        return "is not a directory"
    existing = next(d for d in (root, *root.parents) if d.exists())
    if not existing.is_dir():
        return f"cannot be created ({existing} is a file)"
    if not os.access(existing, os.W_OK | os.X_OK):
        return "is not writable" if existing == root else f"cannot be created ({existing} is not writable)"
    return None


_LAYOUT = {  # what torchvision expects to find in the cache directory
    "cifar10": "cifar-10-batches-py/, unpacked from cifar-10-python.tar.gz",
    "svhn": "train_32x32.mat and test_32x32.mat",
    "mnist": "MNIST/raw/ with the four *-ubyte files",
}


def _unavailable(dataset: str, directory: Path, reason: str) -> DatasetUnavailableError:
    """The one error for a missing dataset: what, where we looked, why, and how to get it."""
    ways = [
        "connect to the internet and re-run with download allowed (download=True); torchvision "
        "fetches it into that directory",
        f"or download it manually into {directory} ({_LAYOUT.get(dataset, 'torchvision layout')})",
    ]
    if dataset.startswith("cifar10"):
        ways.append(f"or set {SUBSET_ENV}=/path/to/cifar10-subset.npz to use the real "
                    "6,102-image CIFAR-10 subset")
    ways.append('or use dataset="synthetic" (generated offline data), or pass '
                'fallback="synthetic" to fall back to it')
    return DatasetUnavailableError(
        f"dataset {dataset!r} is not available in {directory}: {reason}. To get it: "
        + "; ".join(ways) + ".")


# ------------------------------------------------------ stratified subsets --
def stratified_indices(labels, n: int | None, seed: int = 0) -> np.ndarray:
    """Indices of a class-stratified subset of size ``n``, sorted (original order kept).

    Classes get as equal a share as possible (a class with too few examples
    gives all it has and the others share the rest); which examples, and which
    classes get the remainder, is drawn from ``seed``. ``n=None`` or ``n`` equal
    to the number of labels returns every index.
    """
    labels = np.asarray(labels).reshape(-1)
    total = labels.shape[0]
    if n is None or n == total:
        return np.arange(total)
    if n < 0 or n > total:
        raise ValueError(f"asked for {n} examples, but only {total} exist")
    classes, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed_from(seed, 17))
    quota = np.zeros_like(counts)
    remaining = n
    while remaining > 0:
        open_ = np.flatnonzero(quota < counts)
        share = remaining // len(open_)
        if share == 0:  # fewer left than open classes: one more each, seed-chosen classes
            chosen = rng.permutation(open_)[:remaining]
            quota[chosen] += 1
            break
        add = np.minimum(share, counts[open_] - quota[open_])
        quota[open_] += add
        remaining -= int(add.sum())
    picked = [rng.choice(np.flatnonzero(labels == c), size=int(q), replace=False)
              for c, q in zip(classes, quota) if q > 0]
    return np.sort(np.concatenate(picked)) if picked else np.arange(0)


def _select(x: np.ndarray, y: np.ndarray, n: int | None, seed: int, what: str):
    if n is not None and n > len(y):
        raise ValueError(f"asked for {n} {what} examples, but only {len(y)} exist")
    idx = stratified_indices(y, n, seed)
    return x[idx], y[idx]


def _to_tensors(x: np.ndarray, y, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images -> float32 NCHW in [0, 1]; labels -> int64."""
    xt = torch.from_numpy(np.ascontiguousarray(x))
    if xt.dim() == 3:  # (N, H, W) grey
        xt = xt.unsqueeze(1)
    elif channels_last:
        xt = xt.permute(0, 3, 1, 2)
    xt = xt.contiguous().float().div_(255.0)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.int64).reshape(-1)
    return xt, yt


def _check_labels(y: np.ndarray, n_classes: int, where: str) -> None:
    """Labels are whole numbers in 0..n_classes-1, one per image; else an UnusableDatasetError."""
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise UnusableDatasetError(f"{where}: labels must be whole numbers, one per image, got "
                                   f"{y.dtype} of shape {y.shape}")
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        raise UnusableDatasetError(f"{where}: {int(bad.sum())} label(s) outside the classes "
                                   f"0..{n_classes - 1} (e.g. {int(y[bad][0])})")


def _build(name, xtr, ytr, xte, yte, n_train, n_test, seed, channels_last, **meta) -> ImageData:
    """Check the labels, stratify (on uint8, before the float copy) and wrap."""
    for split, y in (("training", ytr), ("test", yte)):
        _check_labels(np.asarray(y).reshape(-1), len(meta["classes"]), f"{meta['source']} ({split} set)")
    xtr, ytr = _select(xtr, np.asarray(ytr), n_train, seed_from(seed, 1), "training")
    xte, yte = _select(xte, np.asarray(yte), n_test, seed_from(seed, 2), "test")
    x_train, y_train = _to_tensors(xtr, ytr, channels_last)
    x_test, y_test = _to_tensors(xte, yte, channels_last)
    return ImageData(name=name, x_train=x_train, y_train=y_train, x_test=x_test,
                     y_test=y_test, **meta)


# ------------------------------------------------------------- real data --
def _torchvision(dataset: str, root: Path, download: bool, check_only: bool = False):
    """(train, test) torchvision datasets; any failure -> DatasetUnavailableError."""
    # imported here, not at the top: torchvision.datasets pulls in torch._dynamo (about 1.4 s), and
    # every notebook, CLI command and test imports this module while few load a torchvision dataset
    import torchvision.datasets as tvd

    def make(train: bool, dl: bool):
        if dataset == "cifar10":
            return tvd.CIFAR10(str(root), train=train, download=dl)
        if dataset == "svhn":
            return tvd.SVHN(str(root), split="train" if train else "test", download=dl)
        return tvd.MNIST(str(root), train=train, download=dl)

    try:
        return make(True, False), make(False, False)
    except Exception as err:  # not (completely) on disk
        if check_only or not download:
            raise _unavailable(dataset, root, f"not found on disk ({err})") from err
    try:
        return make(True, True), make(False, True)
    except Exception as err:  # offline: URLError / OSError / RuntimeError / ImportError ...
        raise _unavailable(
            dataset, root, f"not on disk, and the download failed "
            f"({type(err).__name__}: {err})") from err


def _load_torchvision(dataset, n_train, n_test, seed, root, download, check_only=False):
    train, test = _torchvision(dataset, root, download, check_only)
    if dataset == "cifar10":
        return _build("cifar10", train.data, train.targets, test.data, test.targets,
                      n_train, n_test, seed, channels_last=True, classes=CIFAR10_CLASSES,
                      norm_key="cifar10", augment="crop_flip",
                      source=f"torchvision CIFAR10 in {root}")
    if dataset == "svhn":  # .data is already (N, 3, 32, 32) uint8
        return _build("svhn", train.data, train.labels, test.data, test.labels,
                      n_train, n_test, seed, channels_last=False, classes=DIGIT_CLASSES,
                      norm_key="svhn", augment="none", source=f"torchvision SVHN in {root}")
    return _build("mnist", train.data.numpy(), train.targets.numpy(), test.data.numpy(),
                  test.targets.numpy(), n_train, n_test, seed, channels_last=False,
                  classes=DIGIT_CLASSES, norm_key="mnist", augment="none",
                  source=f"torchvision MNIST in {root}")


def _read_subset(path: Path) -> dict[str, np.ndarray]:
    """The subset file's arrays, checked: x uint8 (N, 32, 32, 3), y whole-number labels 0..9."""
    try:
        with open(path, "rb") as fh, np.load(fh) as f:   # our handle: closed even when np.load fails
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except Exception as err:   # missing arrays, not a .npz, truncated, unreadable, pickled objects ...
        raise UnusableDatasetError(
            f"{path} is not a readable CIFAR-10 subset file (unreadable, corrupt, or without the "
            f"arrays x_train, y_train, x_test, y_test; see data/README.md): "
            f"{type(err).__name__}: {err}") from err
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3) or y.shape != (len(x),):
            raise UnusableDatasetError(
                f"{path}: x_{split} must be uint8 (N, 32, 32, 3) with one label per image, "
                f"got {x.dtype} {x.shape} and labels of shape {y.shape}")
        _check_labels(y, len(CIFAR10_CLASSES), f"{path} (y_{split})")
        if len(x) and int(x.min()) == int(x.max()):
            raise UnusableDatasetError(f"{path} (x_{split}): every pixel of its {len(x)} images is {int(x.min())} "
                                       "(blank images): nothing can be learnt from them; check how the file was made")
    classes = np.unique(arrays["y_train"])
    if len(arrays["y_train"]) and len(classes) < 2:
        raise UnusableDatasetError(f"{path} (y_train): all {len(arrays['y_train'])} training labels are class "
                                   f"{int(classes[0])}: a classifier needs images of several classes; check how "
                                   "the file was made")
    return arrays


def _load_subset(path: Path, n_train, n_test, seed, arrays=None) -> ImageData:
    a = _read_subset(path) if arrays is None else arrays
    return _build("cifar10-subset", a["x_train"], a["y_train"], a["x_test"], a["y_test"],
                  n_train, n_test, seed, channels_last=True, classes=CIFAR10_CLASSES,
                  norm_key="cifar10", augment="crop_flip", source=f"subset file {path}")


def _load_cifar10(n_train, n_test, seed, root: Path, download: bool) -> ImageData:
    path = subset_path()  # a subset file that was set must exist, even when the full set is there
    try:  # 1. the full dataset, if it is already on disk
        return _load_torchvision("cifar10", n_train, n_test, seed, root, False, check_only=True)
    except DatasetUnavailableError:
        pass
    too_small = ""  # 2. the real subset, if configured and big enough
    if path is not None:
        a = _read_subset(path)
        n_tr, n_te = len(a["y_train"]), len(a["y_test"])
        if (n_train is None or n_train <= n_tr) and (n_test is None or n_test <= n_te):
            return _load_subset(path, n_train, n_test, seed, arrays=a)
        too_small = (f"the subset {path} ({SUBSET_ENV}) holds only {n_tr} train / {n_te} test images, fewer "
                     f"than the {n_train or 'all'} / {n_test or 'all'} asked for: lower n_train / n_test "
                     "(--set n_train=...), or use a bigger subset")
    try:  # 3. download
        return _load_torchvision("cifar10", n_train, n_test, seed, root, download)
    except DatasetUnavailableError as err:
        if too_small:   # the subset asked for cannot serve this request: never a fallback; the cause first
            reason = " ".join(str(err).split())
            raise UnusableDatasetError(f"{too_small} (the full CIFAR-10 is not here either: "
                                       f"{reason[:120]}{'...' if len(reason) > 120 else ''})") from err
        raise


# ----------------------------------------------------------- synthetic data --
def _synthetic_prototypes(seed: int, components: int = 3):
    """Per class: a few coloured sinusoids (integer frequencies <= 3 cycles) and one colour blob."""
    g = _generator(seed, 0x5EED, 0)
    k = components
    fx = torch.randint(0, 4, (10, k), generator=g).float()
    fy = torch.randint(-3, 4, (10, k), generator=g).float()
    fx[(fx == 0) & (fy == 0)] = 1.0  # no constant component
    phase = torch.rand(10, k, generator=g) * 2 * math.pi
    colour = torch.randn(10, k, 3, generator=g) * 0.12
    cx = 8 + 16 * torch.rand(10, generator=g)
    cy = 8 + 16 * torch.rand(10, generator=g)
    sigma = 3 + 3 * torch.rand(10, generator=g)
    blob_colour = torch.randn(10, 3, generator=g) * 0.25
    return fx, fy, phase, colour, cx, cy, sigma, blob_colour


def _synthetic_split(n: int, protos, g: torch.Generator, size: int = 32,
                     max_shift: float = 2.0, distractor: float = 0.35, noise: float = 0.06):
    """n images, classes balanced (n // 10 or one more each), in shuffled order."""
    fx, fy, phase, colour, cx, cy, sigma, blob_colour = protos
    y = torch.randperm(n, generator=g) % 10
    du = (torch.rand(n, generator=g) * 2 - 1) * max_shift  # per-image shift, pixels
    dv = (torch.rand(n, generator=g) * 2 - 1) * max_shift
    contrast = 0.7 + 0.6 * torch.rand(n, generator=g)
    other = (y + torch.randint(1, 10, (n,), generator=g)) % 10  # always a different class
    other_weight = distractor * torch.rand(n, generator=g)
    brightness = (torch.rand(n, 3, generator=g) * 2 - 1) * 0.08
    pixel_noise = noise * torch.randn(n, 3, size, size, generator=g)

    u = torch.arange(size, dtype=torch.float32).view(1, 1, size, 1)  # rows
    v = torch.arange(size, dtype=torch.float32).view(1, 1, 1, size)  # columns
    su, sv = du.view(-1, 1, 1, 1), dv.view(-1, 1, 1, 1)

    def pattern(c: torch.Tensor) -> torch.Tensor:  # (n,) class ids -> (n, 3, size, size)
        arg = (2 * math.pi / size) * (fx[c][..., None, None] * (u - su)
                                      + fy[c][..., None, None] * (v - sv)) + phase[c][..., None, None]
        waves = torch.einsum("nkhw,nkc->nchw", torch.sin(arg), colour[c])
        r2 = (u[:, 0] - cx[c].view(-1, 1, 1) - su[:, 0]) ** 2 \
            + (v[:, 0] - cy[c].view(-1, 1, 1) - sv[:, 0]) ** 2
        blob = torch.exp(-r2 / (2 * sigma[c].view(-1, 1, 1) ** 2))
        return waves + blob[:, None] * blob_colour[c][..., None, None]

    x = (0.5 + contrast.view(-1, 1, 1, 1) * pattern(y)
         + other_weight.view(-1, 1, 1, 1) * pattern(other)
         + brightness[..., None, None] + pixel_noise)
    return x.clamp_(0.0, 1.0), y.long()


def synthetic(n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> ImageData:
    """Generated 10-class 3x32x32 data: deterministic per seed, learnable, attackable.

    The test set depends only on (seed, n_test), not on n_train.
    """
    n_train = SYNTHETIC_DEFAULT_SIZES[0] if n_train is None else int(n_train)
    n_test = SYNTHETIC_DEFAULT_SIZES[1] if n_test is None else int(n_test)
    if n_train < 0 or n_test < 0:
        raise ValueError(f"sizes must be >= 0, got n_train={n_train}, n_test={n_test}")
    protos = _synthetic_prototypes(seed)
    x_train, y_train = _synthetic_split(n_train, protos, _generator(seed, 0x5EED, 1))
    x_test, y_test = _synthetic_split(n_test, protos, _generator(seed, 0x5EED, 2))
    return ImageData(name="synthetic", x_train=x_train, y_train=y_train, x_test=x_test,
                     y_test=y_test, classes=SYNTHETIC_CLASSES, norm_key="synthetic",
                     augment="crop_flip", source=f"generated synthetic data (seed={seed})",
                     generated=True)


# -------------------------------------------------------------- entry point --
def load_dataset(name: str, n_train: int | None = None, n_test: int | None = None,
                 seed: int = 0, root: str | Path | None = None, download: bool = True,
                 fallback: str | None = None) -> ImageData:
    """Load a dataset as an :class:`ImageData` (see the module docstring for the sources).

    ``n_train`` / ``n_test``: size of a class-stratified subset drawn with ``seed``
    (None: everything; synthetic: 2000 / 500). ``root``: cache directory
    (default :func:`data_dir`). ``download``: allow torchvision to fetch.
    ``fallback="synthetic"``: when the dataset is unavailable and nothing else was asked for,
    warn loudly and return generated data of the same sizes (``generated`` and
    ``fallback_reason`` set) instead of raising. A subset file or data directory set in the
    environment that cannot be used, or labels outside the classes, raise
    :class:`UnusableDatasetError` whatever ``fallback`` says.
    """
    dataset = canonical_dataset(name)
    if fallback is not None and canonical_dataset(fallback) != "synthetic":
        raise ValueError(f"fallback must be None or 'synthetic', got {fallback!r}")
    for n, what in ((n_train, "n_train"), (n_test, "n_test")):
        if n is not None and n < 0:
            raise ValueError(f"{what} must be >= 0 or None, got {n}")
    if dataset == "synthetic":
        return synthetic(n_train, n_test, seed)
    dir_env = os.environ.get(DATA_DIR_ENV) if root is None else None   # a directory the user set
    root = Path(root).expanduser() if root is not None else data_dir()
    try:
        if dataset == "cifar10":
            return _load_cifar10(n_train, n_test, seed, root, download)
        if dataset == "cifar10-subset":
            path = subset_path()
            if path is None:
                raise DatasetUnavailableError(
                    f"dataset 'cifar10-subset' needs {SUBSET_ENV} set to the path of a "
                    "cifar10-subset.npz (see data/README.md); it is not set. Use "
                    'dataset="cifar10" for the full set, or dataset="synthetic".')
            return _load_subset(path, n_train, n_test, seed)
        return _load_torchvision(dataset, n_train, n_test, seed, root, download)
    except UnusableDatasetError:
        raise
    except DatasetUnavailableError as err:
        if dir_env and dataset != "cifar10-subset":
            problem = _dir_problem(root) if download else None
            raise UnusableDatasetError(
                f"{DATA_DIR_ENV} is set to {dir_env!r}, which {problem}, so {dataset} cannot be "
                f"downloaded into it; make it writable or point {DATA_DIR_ENV} elsewhere"
                if problem else f"{DATA_DIR_ENV} is set to {dir_env!r}, so no generated data stands "
                                f"in: {err}") from err
        if fallback is None:
            raise
        data = synthetic(n_train, n_test, seed)
        warnings.warn(
            f"\n!!! {dataset.upper()} IS UNAVAILABLE -- THIS RUN USES GENERATED SYNTHETIC DATA, "
            f"NOT {dataset.upper()}. Results say nothing about {dataset}. !!!\nReason: {err}",
            RuntimeWarning, stacklevel=2)
        data.source = f"FALLBACK (instead of unavailable {dataset}): {data.source}"
        data.fallback_reason = str(err)
        return data


# ------------------------------------------------------------ augmentation --
def augment_batch(x: torch.Tensor, mode: str,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image augmentation of a batch (N, C, H, W), vectorised on x's device.

    ``"crop_flip"``: random crop after 4-pixel zero padding, then a random
    horizontal flip (p = 0.5). ``"none"``: x unchanged. Random numbers come from
    ``generator`` (on its own device, then moved to x's), so a seeded generator
    makes the result deterministic.
    """
    if mode == "none":
        return x
    _check_augment(x, mode)
    return _apply_crop_flip(x, *_crop_flip_params(x.shape[0], generator, x.device))


def _check_augment(x: torch.Tensor, mode: str) -> None:
    if mode != "crop_flip":
        raise ValueError(f"unknown augmentation {mode!r}; known: {', '.join(AUGMENT_MODES)}")
    if x.dim() != 4:
        raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(x.shape)}")


_CROP_PAD = 4


def _crop_flip_params(n: int, generator: torch.Generator | None, device):
    """(oy, ox, flip) for n images, drawn on the generator's device, then moved to ``device``.

    From a CPU generator to a CUDA batch the three small tensors go through
    pinned memory with ``non_blocking=True``: no host-device synchronisation.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    oy = torch.randint(0, 2 * _CROP_PAD + 1, (n,), generator=generator, device=gen_device)
    ox = torch.randint(0, 2 * _CROP_PAD + 1, (n,), generator=generator, device=gen_device)
    flip = torch.rand(n, generator=generator, device=gen_device) < 0.5
    device = torch.device(device)
    if gen_device.type == "cpu" and device.type == "cuda":
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in (oy, ox, flip))
    return oy.to(device), ox.to(device), flip.to(device)


def _apply_crop_flip(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor,
                     flip: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    pad = _CROP_PAD
    padded = F.pad(x, (pad, pad, pad, pad))  # zeros
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = oy[:, None] + ar_h  # (N, H)
    cols = ox[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (N, W), reversed if flipped
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------- batches --
def steps_per_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Number of batches one epoch over n examples gives."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def iterate_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = True,
                    augment: str = "none", seed: int = 0, epoch: int = 0, start_step: int = 0,
                    drop_last: bool = True, device=None, rank: int = 0, world_size: int = 1
                    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yields (step, xb, yb). Order = a permutation drawn from a CPU generator seeded by (seed, epoch); the
    augmentation of batch `step` uses a generator seeded by (seed, epoch, step), so starting at `start_step`
    gives exactly the batches an uninterrupted epoch would give from that step on (this is how training
    resume stays bit-identical). Data already on the GPU stays there: indexing happens on x's device;
    `device` moves each batch if x is elsewhere.

    Sharding (multi-process training): with ``world_size > 1`` each call yields only
    rank ``rank``'s contiguous slice of every global batch of ``batch_size``
    (which must divide by ``world_size``): the same global batches, in the same
    order, with the same per-image augmentation as one process gets, split
    across the ranks. The number of steps is that of the global batch."""
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"x has {n} examples but y has {y.shape[0]}")
    if augment not in AUGMENT_MODES:
        raise ValueError(f"unknown augmentation {augment!r}; known: {', '.join(AUGMENT_MODES)}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if batch_size % world_size:
        raise ValueError(f"the global batch of {batch_size} does not split evenly over "
                         f"{world_size} processes; use a batch size divisible by {world_size}")
    if world_size > 1 and not drop_last:
        raise ValueError("sharded batches (world_size > 1) need drop_last=True")
    steps = steps_per_epoch(n, batch_size, drop_last)
    if shuffle:
        order = torch.randperm(n, generator=_generator(seed, epoch))
    else:
        order = torch.arange(n)
    order = order.to(x.device)
    local = batch_size // world_size
    for step in range(max(0, start_step), steps):
        idx = order[step * batch_size:(step + 1) * batch_size]
        n_global = idx.shape[0]          # < batch_size only for a kept last batch (1 process)
        lo, hi = (rank * local, (rank + 1) * local) if world_size > 1 else (0, n_global)
        idx = idx[lo:hi]
        xb, yb = x[idx], y[idx.to(y.device)]
        if device is not None:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        if augment != "none":
            _check_augment(xb, augment)
            params = _crop_flip_params(n_global, _generator(seed, epoch, step), xb.device)
            xb = _apply_crop_flip(xb, *(t[lo:hi] for t in params))
        yield step, xb, yb
