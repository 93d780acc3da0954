"""The adaptive evaluation of a run: every finished model under the attacks beyond the paper.

:func:`evaluate_adaptive_run` runs :func:`dwf_lab.evaluation.adaptive.evaluate_adaptive`
(attacks made for mixtures, the official AutoAttack, long PGD, and the per-example worst case
``"worst-case (all)"``) on the finished stages and baselines of one seed and merges the
numbers into the seed's evaluation files, so the report's "Beyond the paper" table shows
them beside Tables 2 and 3. It also writes each model's gradient-masking checklist
(``report/checklist_<name>_seed<k>.md`` / ``.json``, :mod:`dwf_lab.evaluation.checklist`),
with another finished single model of the run as the transfer surrogate.

The per-model steps, :func:`adaptive_into_record` and :func:`write_checklist`, are the ones a
model no run trained goes through too (:mod:`dwf_lab.pipeline.external`).
"""
import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from dwf_lab.attacks.gate import is_mixture
from dwf_lab.attacks.mixture_aware import model_kind
from dwf_lab.attacks.precision import precision_for
from dwf_lab.core.config import pixel_fraction
from dwf_lab.core.io import atomic_write_text
from dwf_lab.core.runtime import Runtime
from dwf_lab.evaluation.adaptive import AdaptiveSettings, evaluate_any
from dwf_lab.evaluation.checklist import (
    CheckItem,
    ChecklistSettings,
    checklist_markdown,
    items_to_json,
    run_checklist,
    stored_pgd,
    with_stored_checks,
)
from dwf_lab.evaluation.metrics import unpack_bits
from dwf_lab.evaluation.records import load_checklist, merge_into_result, record_eps, settings_difference
from dwf_lab.pipeline.reproduce import evaluate_run
from dwf_lab.training.builders import load_run_model, uniform_ensemble
from dwf_lab.training.recipes import RECIPES, recipe
from dwf_lab.training.stages import BASELINE_ROWS, select_stages, stages_done


def _surrogate_stage(name: str, done: list) -> str | None:
    """A different finished single model of the run, as a transfer source for the checklist."""
    for other in ("benign", "pgd-at", "fgsm-at"):
        if other != name and other in done:
            return other
    others = [n for n in done if n != name and n not in ("mixture", "gate")]
    return others[0] if others else None


def _surrogate_for(run, seed: int, name: str, done: list, data, dev) -> Callable[[nn.Module], nn.Module | None]:
    """The checklist's transfer source for the run's model ``name``: :func:`_surrogate_stage`, loaded
    (none for a mixture: the average of its own experts serves)."""
    def surrogate(model: nn.Module) -> nn.Module | None:
        other = None if is_mixture(model) else _surrogate_stage(name, done)
        return None if other is None else load_run_model(run, seed, other, data, map_location=dev)
    return surrogate


def gets_gate_attacks(kind: str) -> bool:
    """Whether a model of this kind is a gated mixture of the run's experts (or their uniform
    average), which the gate-aware attacks apply to (the course's banner asks this too)."""
    r = RECIPES.get(kind)
    return kind == "uniform_ensemble" or (r is not None and r.model == "mixture")


@dataclass
class _Target:
    """One model of a run that the adaptive evaluation covers."""
    name: str                       # stage name / eval file stem
    row: str
    load: Callable[[], nn.Module]
    mixture: bool | str             # gets the gate-aware attacks (known before loading; SoE, ADVMoE: their kind)
    fp32_only: bool = False         # a model bf16 evaluation is not checked on (SoE, ADVMoE): fp32

    def settings(self, s: AdaptiveSettings) -> AdaptiveSettings:
        """``s`` in the precision this model is attacked in (dwf_lab.attacks.precision)."""
        return dataclasses.replace(s, precision="fp32") if self.fp32_only else s


def _targets(run, seed: int, data, which: str | None, dev) -> list[_Target]:
    """Finished training stages (as ``which`` selects) and, for ``which`` None/"all"/"baselines"
    or their names, the evaluated baselines of ``python -m dwf_lab baselines`` (SoE, ADVMoE,
    uniform ensemble)."""
    p = run.profile
    tokens = [t.strip() for t in (which or "all").split(",") if t.strip()]
    stage_tokens = [t for t in tokens if t not in BASELINE_ROWS]
    out = []
    for st in select_stages(p, ",".join(stage_tokens)) if stage_tokens else []:
        r = recipe(st.kind)
        if not r.gate_only and run.is_done(seed, st.name):
            out.append(_Target(st.name, st.row, lambda st=st: load_run_model(run, seed, st, data,
                                                                             map_location=dev),
                               gets_gate_attacks(st.kind)))
    for name, row in BASELINE_ROWS.items():
        if {"all", "baselines", name} & set(tokens):
            if not run.eval_path(seed, name).exists():
                continue    # not run yet: python -m dwf_lab baselines
            if name == "uniform-ensemble":
                out.append(_Target(name, row, lambda: uniform_ensemble(run, seed, data).to(dev),
                                   gets_gate_attacks("uniform_ensemble")))
            elif run.is_done(seed, name):
                out.append(_Target(name, row, lambda n=name: load_run_model(run, seed, n, data,
                                                                             map_location=dev), name, True))
    if not out and tokens and not stage_tokens:
        raise FileNotFoundError(f"no evaluated baseline among {', '.join(tokens)}: "
                                "run python -m dwf_lab baselines first")
    return out


def stored_settings_differences(rec: dict, s: AdaptiveSettings, names: Sequence[str], seed: int,
                                redo: Sequence[str] = ()) -> dict[str, str]:
    """The attack keys of ``names`` stored in ``rec`` with other settings than ``s`` asks for (keys in
    ``redo`` left out), each with how it differs (:func:`settings_difference`)."""
    stored = rec.get("per_example", {})
    n_images = s.images(int(rec.get("n_test") or 0))
    out = {}
    for k in names:
        if k in stored and k not in redo:
            why = settings_difference(rec.get("attack_settings", {}).get(k),
                                      {**s.attack_settings(k, seed), "n": n_images})
            if why:
                out[k] = why
    return out


def check_redo(s: AdaptiveSettings, redo: Sequence[str]) -> None:
    """Refuse ``redo`` keys that name no attack of ``s`` (one ValueError, before anything runs)."""
    known = set(s.every_attack_name())
    if set(redo) - known:
        raise ValueError(f"cannot redo {sorted(set(redo) - known)}: the attacks are {sorted(known)}")


def refuse_changed_settings(found: dict, command: str) -> None:
    """One line for stored results computed with other settings than asked for (``found``: path ->
    {key: difference}): which result differs and how, and how to recompute them (``command``, the
    command line that made them, gets ``--redo``). A result is never relabelled with settings it was
    not computed with."""
    if not found:
        return
    path, diffs = next(iter(found.items()))
    key, why = next(iter(diffs.items()))
    keys = list(dict.fromkeys(k for d in found.values() for k in d))
    more = sum(len(d) for d in found.values()) - 1
    raise ValueError(
        f"{path}: the stored {key!r} result was computed with other settings than asked for ({why})"
        + (f", and so were {more} more stored result(s) ({', '.join(keys)})" if more else "")
        + f"; nothing was run and every stored result is kept. Recompute with these settings: {command} "
        f"--redo {','.join(keys)} (in Python: redo={tuple(keys)!r}), or ask for the stored settings")


def stored_autoattack_is_standard(run, seed: int, names: Sequence[str]) -> bool:
    """True when these models of the run have AutoAttack results and every one of them ran the
    official suite at its standard budget (a run that went through ``--aa standard`` or notebook
    06's full scope): asking for the profile's smaller budget would then be refused, so the
    course asks for the standard suite again and reads the stored results."""
    found = []
    for name in names:
        path = run.eval_path(seed, name)
        if path.exists():
            stored = (json.loads(path.read_text()).get("attack_settings") or {}).get("autoattack")
            if stored is not None:
                found.append(bool(stored.get("standard")))
    return bool(found) and all(found)


def _aa_flag(s: AdaptiveSettings, p) -> str:
    """``" --aa standard"`` when ``s`` runs the official AutoAttack at its standard budget and the
    profile ``p``'s size would not (the command line that asks for ``s``), else ``""``."""
    standard = s.aa_budget() == s.standard_autoattack().aa_budget()
    return " --aa standard" if standard and s.aa_budget() != AdaptiveSettings.from_profile(p).aa_budget() else ""


def check_stored_settings(rec: dict, path, s: AdaptiveSettings, mixture: bool, seed: int,
                          redo: Sequence[str] = (), command: str = "python -m dwf_lab adaptive") -> None:
    """:func:`refuse_changed_settings` for the one record ``rec`` (stored at ``path``)."""
    diffs = stored_settings_differences(rec, s, s.attack_names(mixture), seed, redo)
    refuse_changed_settings({path: diffs} if diffs else {}, command)


def adaptive_into_record(rec: dict, path, load: Callable[[], nn.Module], mixture: bool, data,
                         s: AdaptiveSettings, seed: int, dev, *, progress: bool = True,
                         desc: str = "adaptive attacks", redo: Sequence[str] = (),
                         command: str = "python -m dwf_lab adaptive") -> nn.Module | None:
    """The adaptive attacks of ``s`` that the evaluation record ``rec`` (of the file ``path``) lacks,
    merged into it; the caller writes it. The one per-record step of a run's models and of a model
    no run trained (:mod:`dwf_lab.pipeline.external`).

    Refused with one line, before anything runs: a record of other test images or another eps, and
    a stored result computed with other settings than ``s`` (:func:`check_stored_settings`; its
    line names ``command`` with the ``--redo`` that recomputes it) unless its key is in ``redo``,
    which recomputes it and replaces the stored one. The model (``load()``, called only when an
    attack runs; ``mixture``: it gets the gate-aware attacks) must agree with the stored clean
    predictions. Each result's own settings go to ``rec["attack_settings"][key]``, the official
    AutoAttack's accuracy after each of its attacks to ``rec["autoattack_stages"]``, and
    ``"worst-case (all)"`` is recomputed over every stored attack. With ``s.n_examples`` the
    attacks run on the first that many test images only; each result says so (``n`` in its
    settings, ``rec["per_example_n"]``), and a stored result on another number is refused. Returns the model if it was
    loaded, else None.
    """
    n = int(rec.get("n_test") or 0)
    if n != len(data.x_test):
        raise ValueError(f"{path} covers {n} test images but the data has {len(data.x_test)}: "
                         "evaluate with the same data (profile) the run was evaluated with")
    if abs(record_eps(rec) - s.eps) > 1e-9:
        raise ValueError(f"{path} was evaluated at eps {pixel_fraction(record_eps(rec))} but the adaptive "
                         f"attacks run at eps {pixel_fraction(s.eps)}: one worst case cannot pool two "
                         "threat models. Use the run's own settings, or another run for another eps")
    check_stored_settings(rec, path, s, mixture, seed, redo, command)
    stored = set(rec.get("per_example", {})) - set(redo)
    if not [k for k in s.attack_names(mixture) if k not in stored]:
        merge_into_result(rec, {})   # keeps worst-case (all) in step with what is stored
        return None
    model = load().eval()
    skip = [k for k in s.attack_names(model_kind(model)) if k in stored]
    m = s.images(n)   # the attacks run on the first m test images (s.n_examples), stated with each result
    t0 = time.time()
    _, correct, found = evaluate_any(model, data.x_test[:m], data.y_test[:m], s, seed, dev, progress, skip, desc)
    sa_stored = rec.get("per_example", {}).get("SA")
    if sa_stored is not None:
        differ = (unpack_bits(sa_stored, n)[:m] != correct["SA"].cpu()).float().mean().item()
        if differ > 0.01:   # a few borderline flips are float noise (e.g. GPU kernels)
            raise ValueError(f"{path}: the stored clean predictions differ from this model's "
                             f"on {100 * differ:.1f}% of the images (another model or other "
                             "data?); re-evaluate the model")
    computed = found["attack_settings"]
    if sa_stored is not None:
        correct.pop("SA")   # the record's own clean result covers every test image
    merge_into_result(rec, {k: v for k, v in correct.items() if k in redo}, overwrite=True, settings=computed)
    merge_into_result(rec, correct, settings=computed)
    if "autoattack_stages" in found:
        rec["autoattack_stages"] = found["autoattack_stages"]
    info = rec.setdefault("adaptive", {})
    info["settings"] = s.to_dict()   # the last call's; each result's own: rec["attack_settings"]
    info.setdefault("elapsed_s", {}).update(found["elapsed_s"])
    info.pop("autoattack_stages", None)   # an older dwf-lab's cascade stages: not the official suite's
    info["elapsed_s_total"] = round(info.get("elapsed_s_total", 0.0) + time.time() - t0, 2)
    info["note"] = ("attacks beyond the paper (dwf_lab.evaluation.adaptive); each one's settings are in "
                    "'attack_settings'; 'worst-case (all)' is the per-example worst case over every "
                    "stored attack, the paper's included")
    return model


def evaluate_adaptive_run(run, seed: int, data, settings: AdaptiveSettings | None = None,
                          progress: bool = True, which: str | None = None, checklist: bool = True,
                          checklist_settings=None, device: str | None = None,
                          redo: Sequence[str] = (), replace: Sequence[str] = ()) -> list[dict]:
    """Adaptive attacks for every finished model of one seed, merged into its eval JSON.

    Models: each finished stage (``which`` as in :func:`dwf_lab.training.stages.select_stages`)
    and, unless ``which`` picks stages, the baselines already evaluated by
    :func:`dwf_lab.pipeline.baselines.train_and_evaluate_baselines` (SoE is attacked with
    both of its gradient modes, per example the worse one counts). Makes sure the
    paper-protocol evaluation exists (runs it if not), computes the adaptive
    metrics that are not stored yet, adds them, their per-example bits and each one's own
    settings (``rec["attack_settings"][key]``) to ``eval/<name>_seed<k>.json``, recomputes
    ``"worst-case (all)"`` over every stored attack, and writes the file atomically. With
    ``checklist`` it also writes the gradient-masking checklist to
    ``report/checklist_<name>_seed<k>.md`` and ``.json``; its checks read off the stored results
    are refreshed on every call.

    Idempotent: an attack already stored with the settings asked for is not rerun. One stored
    with other settings (a smaller budget, another library version, or none recorded) is never
    relabelled: before anything runs, the call stops with one line naming the result, the
    difference and how to redo it, unless its key is in ``redo`` (e.g. ``("autoattack",)``),
    which recomputes it and replaces the stored one. ``replace`` (e.g. ``("autoattack",)``: what a
    deliberate change of budget asks for, notebook 06's full scope) recomputes and replaces the
    stored results of those keys only where their settings differ from the ones asked for, and
    keeps the ones that match. The official AutoAttack's robust accuracy after each of its attacks
    goes to ``rec["autoattack_stages"]``. Returns the records.
    """

    p = run.profile
    s = settings or AdaptiveSettings.from_profile(p)
    dev = torch.device(device) if device else Runtime.from_profile(p).device
    check_redo(s, tuple(redo) + tuple(replace))
    command = f"python -m dwf_lab adaptive --run {run.name}" + _aa_flag(s, p)
    done = [st.name for st in stages_done(run, seed)]
    targets = _targets(run, seed, data, which, dev)
    changed, redo_for = {}, {}  # every stored result checked before anything runs
    for target in targets:
        path = run.eval_path(seed, target.name)
        if path.exists():
            diffs = stored_settings_differences(json.loads(path.read_text()), target.settings(s),
                                                s.attack_names(target.mixture), seed, redo)
            redo_for[target.name] = tuple(redo) + tuple(k for k in diffs if k in replace)
            diffs = {k: why for k, why in diffs.items() if k not in replace}
            if diffs:
                changed[path] = diffs
    refuse_changed_settings(changed, command)
    out = []
    for target in targets:
        path = run.eval_path(seed, target.name)
        if not path.exists():
            evaluate_run(run, seed, data, which=target.name, progress=progress,
                         device=str(dev) if device else None)
        rec = json.loads(path.read_text())
        model = adaptive_into_record(rec, path, target.load, target.mixture, data, target.settings(s), seed, dev,
                                     progress=progress, desc=f"adaptive {target.name}",
                                     redo=redo_for.get(target.name, tuple(redo)), command=command)
        atomic_write_text(path, json.dumps(rec, indent=1))
        out.append(rec)

        if checklist:
            load = (lambda m=model: m) if model is not None else (lambda t=target: t.load().eval())
            write_checklist(run, seed, target.name, target.row, rec, load, data, dev, checklist_settings,
                            _surrogate_for(run, seed, target.name, done, data, dev))
    return out


def write_checklist(run, seed: int, name: str, row: str, rec: dict, load: Callable[[], nn.Module], data, dev,
                    settings: ChecklistSettings | None = None,
                    surrogate: Callable[[nn.Module], nn.Module | None] | None = None) -> None:
    """``report/checklist_<name>_seed<k>.md`` and ``.json`` of one model (a run's, or one no run
    trained): the checks that run attacks (once; a saved checklist is kept, and ``load()`` is then
    never called) and the checks read off the evaluation record ``rec`` (recomputed every time, so
    they follow the attacks stored since). ``surrogate(model)``: the transfer check's source model,
    or None (no transfer check, except for a mixture: the average of its own experts)."""
    md = run.checklist_path(seed, name, ".md")
    js = md.with_suffix(".json")
    if md.exists() and js.exists():
        try:
            saved = load_checklist(js)
            known = set(ChecklistSettings.__dataclass_fields__)
            cs = ChecklistSettings(**{k: v for k, v in saved["settings"].items() if k in known})
            items = [CheckItem.from_dict(d) for d in saved["items"]]
            m = int(saved["n_examples"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{js} is not a readable checklist ({err}); delete it and its .md "
                             "to recompute it") from err
    else:
        model = load()
        cs = settings or ChecklistSettings.from_profile(run.profile)
        cs = dataclasses.replace(cs, precision=precision_for(model, cs.precision))
        m = min(len(data.x_test), cs.n_examples or len(data.x_test))
        items = run_checklist(model, data.x_test[:m].to(dev), data.y_test[:m].to(dev), cs,
                              surrogate=surrogate(model) if surrogate else None, seed=seed,
                              stored=stored_pgd(rec, cs, m))
    items = with_stored_checks(items, rec, cs)
    title = f"Gradient-masking checklist: {row} ({name}), seed {seed}"
    atomic_write_text(md, checklist_markdown(items, title=title))
    atomic_write_text(js, json.dumps({"model": name, "row": row, "seed": seed, "n_examples": m,
                                      "settings": cs.to_dict(), "items": items_to_json(items)}, indent=1))
