"""Models from outside the kit: a ``package.module:factory`` spec, the checks that it is a classifier
the kit can attack, and whether it looks like it expects normalized images.

The kit attacks images in [0, 1] with eps in pixel units, so a model must normalize inside itself
(:class:`dwf_lab.models.common.Normalize`). :func:`load_factory` imports a factory and calls it
(``--model package.module:factory``, or ``path/to/file.py:factory``); :func:`check_classifier`
refuses, with one line, a model that fails on one batch of the data's images or predicts another
number of classes; :func:`normalization_warning` says when a model evidently expects normalized
inputs. Its two rules, and what they miss:

- structure: the module *is* a torchvision classification network (torchvision's weights normalize
  in their ``transforms()``, outside the network), or contains one and no module anywhere holds
  normalization constants (an attribute ``mean``/``std`` or ``mu``/``sigma``). A wrapper that
  normalizes with constants written into its ``forward`` is flagged although it is right; a model
  that is not torchvision's and expects normalized inputs is not flagged by this rule;
- behaviour (a model that has learnt something): its clean accuracy on (x - mean) / std, with the
  dataset's constants, is at least 20 points and 3 standard errors above its accuracy on the [0, 1]
  images themselves. A model with random weights gives no signal either way, and one that
  normalizes with other constants (ImageNet's on CIFAR-10, say) is not caught.
"""
import ast
import contextlib
import importlib
import importlib.util
import io
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn

# attribute names under which normalization layers keep their constants (the kit's Normalize,
# torchvision.transforms.Normalize, RobustBench's ImageNormalizer: mean/std; others: mu/sigma)
_CONSTANT_NAMES = (("mean", "std"), ("mu", "sigma"))
WRAP_ADVICE = ("wrap the normalization inside the model, e.g. "
               "nn.Sequential(dwf_lab.models.Normalize(mean, std), model), so it takes images in [0, 1]")


# ------------------------------------------------------------------ specs --
def parse_model_args(pairs: list[str] | None) -> dict:
    """``["num_classes=10", "name=x"]`` -> ``{"num_classes": 10, "name": "x"}``: each value read as
    a Python literal (10, 0.5, True, None, "text", (1, 2)), else kept as the text itself."""
    out = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip().isidentifier():
            raise ValueError(f"--model-arg expects name=value (a keyword argument of the factory), got {pair!r}")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def _import(where: str, spec: str):
    """The module ``where`` names: a dotted module (the working directory is searched too, as
    ``python -m`` does) or a ``.py`` file."""
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise ValueError(f"--model {spec}: no file {path}")
        name = "dwf_lab_external_" + "".join(c if c.isalnum() else "_" for c in path.stem)
        loader = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        return module
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(where)


def load_factory(spec: str, kwargs: dict | None = None) -> nn.Module:
    """Import ``package.module:factory`` (or ``file.py:factory``) and return ``factory(**kwargs)``.

    The factory is called under ``torch.manual_seed(0)`` (the global RNG restored after), so one
    that builds random weights builds the same model every time and its state_dict hash names it.
    Any failure is one ValueError saying what to fix: a malformed spec, a module that does not
    import, no such factory, a factory that raises or returns something else than an ``nn.Module``.
    """
    where, colon, attr = str(spec).partition(":")
    if not colon or not where or not attr or not all(p.isidentifier() for p in attr.split(".")):
        raise ValueError(f"--model expects package.module:factory (or path/to/file.py:factory), got {spec!r}")
    try:
        with _users_code(f"--model {spec}: importing {where}"):
            module = _import(where, spec)
    except ValueError:
        raise
    except Exception as e:   # the user's code: whatever it raises on import
        raise ValueError(f"--model {spec}: cannot import {where} ({type(e).__name__}: {e}); check the "
                         "spec and that the package is installed or on PYTHONPATH") from None
    factory = module
    try:
        for part in attr.split("."):
            factory = getattr(factory, part)
    except AttributeError:
        raise ValueError(f"--model {spec}: {where} has no {attr!r}") from None
    if not callable(factory):
        raise ValueError(f"--model {spec}: {attr} is a {type(factory).__name__}, not a factory to call")
    try:
        with torch.random.fork_rng(devices=[]), _users_code(f"--model {spec}: {attr}({_show_kwargs(kwargs)})"):
            torch.manual_seed(0)
            model = factory(**(kwargs or {}))
    except ValueError as e:
        if str(e).startswith(f"--model {spec}: "):
            raise
        raise ValueError(f"--model {spec}: {attr}({_show_kwargs(kwargs)}) fails "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None
    except Exception as e:
        raise ValueError(f"--model {spec}: {attr}({_show_kwargs(kwargs)}) fails "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {spec}: {attr}() returned a value of type {type(model).__name__}, not a torch.nn.Module")
    return model


@contextlib.contextmanager
def _users_code(what: str):
    """Run a user's module or factory: ``sys.argv`` is just the module's name meanwhile (a module that
    parses the command line on import must not read dwf-lab's arguments), and a ``sys.exit`` inside
    becomes one ValueError saying what called it and the last line it printed (argparse's usage
    error would read as if dwf-lab rejected its own arguments); otherwise its output goes on as usual."""
    argv, err = sys.argv, io.StringIO()
    sys.argv = [sys.argv[0] if sys.argv else "model"]
    try:
        with contextlib.redirect_stderr(err):
            yield
    except SystemExit as e:
        said = [line.strip() for line in err.getvalue().splitlines() if line.strip()]
        printed = f"; it printed {said[-1][:200]!r}" if said else ""
        raise ValueError(f"{what} called sys.exit({e.code!r}){printed}: a model's module and factory must "
                         "return a model, not end the program (put command-line parsing under "
                         "if __name__ == '__main__':)") from None
    finally:
        sys.argv = argv
    sys.stderr.write(err.getvalue())


def _show_kwargs(kwargs: dict | None) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in (kwargs or {}).items())


# ----------------------------------------------------------------- checks --
def check_classifier(model: nn.Module, shape: tuple[int, int, int], num_classes: int, name: str,
                     device: torch.device | str = "cpu") -> None:
    """One ValueError unless ``model`` has parameters and maps a (1, C, H, W) batch of images in
    [0, 1] to finite logits of shape (1, num_classes) (in eval mode, without gradients)."""
    if next(model.parameters(), None) is None:
        raise ValueError(f"{name} has no parameters: the kit attacks a trained network through its gradients")
    x = torch.rand(1, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    batch = "(" + ", ".join(str(d) for d in (1, *shape)) + ")"
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        raise ValueError(f"{name} fails on a {batch} batch of images in [0, 1] ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:300]}); it must take the data's images") from None
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"{name} returns a {type(out).__name__}, not a tensor of logits: wrap it so that "
                         "forward returns the (N, classes) logits alone")
    if out.dim() != 2 or out.shape[0] != 1:
        raise ValueError(f"{name} maps a {batch} batch to shape {tuple(out.shape)}, not (1, classes) logits")
    if out.shape[1] != num_classes:
        raise ValueError(f"{name} predicts {out.shape[1]} classes but the data has {num_classes}: build it "
                         f"with {num_classes} outputs (e.g. --model-arg num_classes={num_classes})")
    if not torch.isfinite(out).all():
        raise ValueError(f"{name} returns NaN or infinite logits on a {batch} batch of images in [0, 1]")


def normalization_constants(model: nn.Module) -> list[str]:
    """Names of the modules inside ``model`` that hold normalization constants (``mean``/``std`` or
    ``mu``/``sigma``): the kit's Normalize, torchvision's transforms.Normalize, RobustBench's wrappers."""
    return [name or type(m).__name__ for name, m in model.named_modules()
            if any(hasattr(m, a) and hasattr(m, b) for a, b in _CONSTANT_NAMES)]


def _is_torchvision_classifier(m: nn.Module) -> bool:
    return type(m).__module__.startswith("torchvision.models")


def structure_reason(model: nn.Module) -> str | None:
    """Why the module's structure says it expects normalized images (None: it does not say so)."""
    if _is_torchvision_classifier(model):
        return (f"it is torchvision's {type(model).__name__} itself: torchvision's classifiers take "
                "normalized images, their weights' transforms() normalize outside the network")
    inner = [name for name, m in model.named_modules() if name and _is_torchvision_classifier(m)]
    if inner and not normalization_constants(model):
        return (f"it contains torchvision's {type(model.get_submodule(inner[0])).__name__} ({inner[0]}) and no "
                "layer with normalization constants (mean/std)")
    return None


def behaviour_reason(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std,
                     batch_size: int = 256) -> str | None:
    """Why the model's accuracy says it expects normalized images: on (x - mean) / std it is at least
    20 points and 3 standard errors more accurate than on the [0, 1] images ``x`` (None otherwise)."""
    if len(x) == 0:
        return None
    dev = next(model.parameters()).device
    m = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    right = {"raw": 0, "normalized": 0}
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
            right["raw"] += int((model(xb).argmax(1) == yb).sum())
            right["normalized"] += int((model((xb - m) / s).argmax(1) == yb).sum())
    n = len(x)
    raw, norm = right["raw"] / n, right["normalized"] / n
    se = math.sqrt(max(raw * (1 - raw) + norm * (1 - norm), 1e-12) / n)
    if norm - raw >= max(0.20, 3 * se):
        return (f"on {n} test images it is {100 * raw:.1f}% accurate on images in [0, 1] and "
                f"{100 * norm:.1f}% on mean/std-normalized ones")
    return None


def normalization_warning(name: str, model: nn.Module, x: torch.Tensor | None = None,
                          y: torch.Tensor | None = None, mean=None, std=None) -> str | None:
    """One line warning that ``model`` evidently expects normalized images, or None: the structural
    rule, then (given test images and the dataset's constants) the behavioural one (module docstring)."""
    reason = structure_reason(model)
    if reason is None and x is not None and mean is not None:
        reason = behaviour_reason(model, x, y, mean, std)
    if reason is None:
        return None
    return (f"{name} looks like it expects normalized images ({reason}). The kit attacks images in [0, 1] "
            f"with eps in pixel units, so its numbers would not mean what they say: {WRAP_ADVICE}.")
