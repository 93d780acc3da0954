"""The paper's open questions as variants of the end-to-end phase, one table.

The paper leaves its ablations "for future work" (§3 and §6): how many experts,
frozen or jointly trained experts, soft gate or hard routing, randomized or
fixed attack strengths, and what the clean third of each batch is for. Each
variant here changes *one* thing relative to ``reference`` (Algorithm 3 with
the run's settings), starts from the run's trained experts, trains for the
profile's ``mixture_epochs`` on the same data order and with the same
per-step random draws (common random numbers: every variant's stage is
seeded as the run's "mixture" stage), and is evaluated the same way: clean
accuracy (SA), PGD-20 (eps 8/255, step 2/255, random start) through the whole
model, and the per-example worst case of the two.

Layout (idempotent: a variant with an ``eval.json`` is not touched again)::

    runs/<run>/seed-<k>/ablations/<variant>/
        model.safetensors   checkpoints/   metrics.jsonl   eval.json
    runs/<run>/report/ablations.json, ablations.md   (all seeds found)

Main entry point: :func:`run_ablations`.
"""
from __future__ import annotations

import json
import math
import statistics
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from dwf_lab import baselines  # noqa: F401  (registers dwf_mixture_st)
from dwf_lab import train as _train
from dwf_lab.checkpoints import atomic_write_text, load_model
from dwf_lab.data import seed_from
from dwf_lab.evaluate import EvalSettings, evaluate_and_write
from dwf_lab.models import build_model
from dwf_lab.profiles import Profile
from dwf_lab.train import Runtime, Stage, register_recipe, train_stage

METRICS = ("SA", "pgd:20", "worst-case")
COLUMNS = {"SA": "SA", "pgd:20": "PGD-20", "worst-case": "Worst case"}
FIXED_FGSM_EPS = 0.05   # the mean of {0.01, ..., 0.09}


# ------------------------------------------------------------------ recipe --
def _adv_only_batch(model, x, y, p, gen, gen_dev):
    """concat(FGSM, PGD) against the mixture: Algorithm 3 without the clean third.

    Built from the mixed batch itself, so the attack draws are exactly those of
    the reference at every step.
    """
    xin, yin = _train._mixed_batch(model, x, y, p, gen, gen_dev)
    return xin[len(x):], yin[len(x):]


register_recipe("mixture_adv_only", _adv_only_batch)


# ---------------------------------------------------------------- variants --
@dataclass(frozen=True)
class Ablation:
    name: str
    label: str            # the table row
    question: str         # which open question it answers
    description: str
    experts: int | None = None    # the first n experts of the composition order; None = all
    routing: str = "soft"         # "soft" | "topk" (straight-through) | "uniform"
    k: int = 1
    kind: str = "mixture"         # training recipe; "none" = no end-to-end training
    fixed_strengths: bool = False
    retrain_experts: bool = False  # retrain the FGSM/PGD experts under the variant's profile
    default: bool = True          # part of run_ablations(names=None)


ABLATIONS: list[Ablation] = [
    Ablation("reference", "DWF (reference)", "-",
             "All experts, soft gate, experts trained jointly with the gate, randomized attack "
             "strengths, mixed 3x batch: Algorithm 3 with the run's settings. Every other row "
             "changes one thing."),
    Ablation("experts-1", "1 expert", "number of experts",
             "Only the first expert of the composition (the benign one) under Algorithm 3: "
             "with one expert the gate is the constant 1, so this is mixed-batch adversarial "
             "fine-tuning of a single ResNet-18.", experts=1),
    Ablation("experts-3", "3 experts", "number of experts",
             "Benign + FGSM-1 + PGD-1, gate and experts trained end to end.", experts=3),
    Ablation("experts-5", "5 experts", "number of experts",
             "Benign + FGSM-1/2 + PGD-1/2, gate and experts trained end to end.", experts=5),
    Ablation("frozen-experts", "Frozen experts (gate only)", "frozen vs jointly trained experts",
             "The experts are frozen (no gradient, BatchNorm in eval mode); only the gate "
             "learns, on the same mixed batches.", kind="gate"),
    Ablation("routing-top1", "Hard top-1 routing", "soft gate vs hard routing",
             "The gate's top expert answers alone (forward); straight-through gradient of the "
             "softmax (backward), so the gate can learn and attacks see it.", routing="topk", k=1),
    Ablation("routing-top2", "Hard top-2 routing", "soft gate vs hard routing",
             "The gate's two top experts, weights renormalised (forward); straight-through "
             "softmax gradient (backward).", routing="topk", k=2),
    Ablation("routing-uniform", "Uniform average, trained", "soft gate vs no gate",
             "No gate: the experts' logits averaged with equal weights, experts trained end "
             "to end with Algorithm 3.", routing="uniform"),
    Ablation("uniform-untrained", "Uniform average, untrained", "what end-to-end training adds",
             "No gate and no end-to-end phase: the run's experts averaged as they are "
             "(the 'Uniform ensemble' baseline).", routing="uniform", kind="none"),
    Ablation("fixed-strengths", "Fixed attack strengths", "randomized vs fixed strengths",
             "End-to-end phase with FGSM eps fixed at 0.05 and PGD steps fixed at the mean of "
             "the profile's choices, instead of drawn per batch (the experts keep their "
             "randomized training).", fixed_strengths=True),
    Ablation("fixed-strengths-full", "Fixed attack strengths (experts too)",
             "randomized vs fixed strengths",
             "As fixed-strengths, and the FGSM and PGD experts are retrained with the fixed "
             "strengths as well (costs a full expert training).", fixed_strengths=True,
             retrain_experts=True, default=False),
    Ablation("adv-only-batch", "Adversarial-only batch", "mixed 3x batch vs adversarial only",
             "Algorithm 3 trained on concat(FGSM, PGD) only: the clean third of the batch is "
             "dropped (same attack draws).", kind="mixture_adv_only"),
]
BY_NAME = {a.name: a for a in ABLATIONS}


def get_ablation(name: str) -> Ablation:
    if name not in BY_NAME:
        raise ValueError(f"unknown ablation {name!r}; known: {', '.join(BY_NAME)}")
    return BY_NAME[name]


def fixed_pgd_steps(p: Profile) -> int:
    return int(round(statistics.mean(p.pgd_steps_choices)))


def variant_profile(p: Profile, a: Ablation) -> Profile:
    if not a.fixed_strengths:
        return p
    return p.replace(fgsm_eps_choices=(FIXED_FGSM_EPS,), pgd_steps_choices=(fixed_pgd_steps(p),))


def composition_order(p: Profile) -> list[str]:
    """Expert stage names in the order subsets take them: benign, then FGSM and PGD alternating."""
    from dwf_lab.pipeline import expert_stage_names
    names = expert_stage_names(p)
    fg = [n for n in names if n.startswith("fgsm-")]
    pg = [n for n in names if n.startswith("pgd-")]
    order = [n for n in names if n not in fg and n not in pg]
    for i in range(max(len(fg), len(pg))):
        order += fg[i:i + 1] + pg[i:i + 1]
    return order


def skip_reason(a: Ablation, p: Profile) -> str | None:
    """Why a variant does not apply to this profile (None if it does)."""
    total = p.n_experts
    if a.experts is not None:
        if a.experts > total:
            return f"needs {a.experts} experts, the profile has {total}"
        if a.experts == total:
            return f"identical to the reference ({total} experts)"
    if a.routing == "topk" and a.k >= (a.experts or total):
        return f"top-{a.k} of {a.experts or total} experts is the soft gate"
    if a.fixed_strengths and variant_profile(p, a) == p:
        return "the profile's attack strengths are already fixed"
    return None


# --------------------------------------------------------------- one variant --
class _CommonSeedStage(Stage):
    """A stage named after its variant whose random draws are those of the run's mixture stage."""

    @property
    def sid(self) -> int:
        return zlib.crc32(b"mixture")


def ablation_dir(run, seed: int, name: str) -> Path:
    return run.seed_dir(seed) / "ablations" / name


def eval_settings(p: Profile) -> EvalSettings:
    return EvalSettings(fgsm_eps=(), pgd_steps=(20,), long=False, batch_size=p.eval_batch)


def build_variant(p: Profile, data, a: Ablation, expert_paths, seed: int) -> nn.Module:
    """A mixture of the given trained experts, wired as the variant says (gate untrained)."""
    from dwf_lab.pipeline import _model_kwargs, load_experts_into
    kw = dict(_model_kwargs(p, data), n_experts=len(expert_paths), image_size=data.shape[1],
              gate_hidden=p.gate_hidden)
    torch.manual_seed(seed_from(seed, 9001))       # the same gate initialisation as the run's mixture
    if a.routing == "topk":
        model = build_model("dwf_mixture_st", k=a.k, **kw)
    else:
        model = build_model("dwf_mixture", routing=a.routing, **kw)
    return load_experts_into(model, expert_paths)


def _expert_paths(run, seed: int, data, a: Ablation, pv: Profile, rt: Runtime, log,
                  progress: bool) -> list[Path]:
    """The trained experts the variant starts from (retrained ones under its directory)."""
    from dwf_lab.pipeline import build_expert, expert_stage_names
    p = run.profile
    names = composition_order(p)[:a.experts] if a.experts else expert_stage_names(p)
    missing = [n for n in names if not run.is_done(seed, n)]
    if missing:
        raise FileNotFoundError(f"ablations start from the run's trained experts; missing: "
                                f"{', '.join(missing)}. Train them first (pipeline.train_run).")
    paths = {n: run.model_path(seed, n) for n in names}
    if a.retrain_experts:
        for stage in _train.plan_stages(pv):
            if stage.name not in paths or stage.kind not in ("fgsm", "pgd"):
                continue
            path = ablation_dir(run, seed, a.name) / "experts" / f"{stage.name}.safetensors"
            if not path.exists():
                torch.manual_seed(seed_from(seed, stage.sid))   # as the run's own expert
                train_stage(build_expert(pv, data), data, stage, pv, seed=seed,
                            ckpt_dir=ablation_dir(run, seed, a.name) / "checkpoints" / stage.name,
                            final_path=path, runtime=rt, log=log, progress=progress)
            paths[stage.name] = path
    return [paths[n] for n in names]


def _row(rec: dict) -> dict:
    m = rec["metrics"]
    return {"variant": rec["variant"], "label": rec["row"], "question": rec.get("question", ""),
            "seed": rec["seed"], "experts": rec.get("experts"),
            "SA": m.get("SA"), "PGD-20": m.get("pgd:20"), "worst-case": m.get("worst-case"),
            "train_s": rec.get("train_s"), "eval_s": rec.get("elapsed_s"), "note": rec.get("note", "")}


def run_variant(run, seed: int, data, a: Ablation, progress: bool = True,
                device: str | None = None) -> dict:
    """Train (if needed) and evaluate one variant; returns its row."""
    p = run.profile
    vdir = ablation_dir(run, seed, a.name)
    eval_path = vdir / "eval.json"
    if eval_path.exists():
        return _row(json.loads(eval_path.read_text()))
    pv = variant_profile(p, a)
    rt = Runtime.from_profile(p)
    dev = torch.device(device) if device else rt.device
    log_path = vdir / "metrics.jsonl"

    def log(rec: dict) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")

    model_path = vdir / "model.safetensors"
    note, train_s = "", 0.0
    n_experts = a.experts or p.n_experts
    if a.kind == "none":
        model = build_variant(p, data, a, _expert_paths(run, seed, data, a, pv, rt, log, progress), seed)
        note = "no end-to-end training"
    elif model_path.exists():
        model = load_model(model_path)
    elif a.name == "reference" and p.gate_epochs == 0 and run.is_done(seed, "mixture"):
        model = load_model(run.model_path(seed, "mixture"))
        note = "the run's DWF model (trained exactly as this variant would be)"
    else:
        paths = _expert_paths(run, seed, data, a, pv, rt, log, progress)
        model = build_variant(pv, data, a, paths, seed)
        stage = _CommonSeedStage(f"ablation-{a.name}", a.kind, p.mixture_epochs, p.mixture_batch, a.label)
        t0 = time.time()
        train_stage(model, data, stage, pv, seed=seed, ckpt_dir=vdir / "checkpoints",
                    final_path=model_path, runtime=rt, log=log, progress=progress)
        train_s = time.time() - t0
    model = model.to(dev).eval()
    extra = {"variant": a.name, "question": a.question, "experts": n_experts, "routing": a.routing,
             "k": a.k, "kind": a.kind, "train_s": round(train_s, 2), "note": note,
             "attack_strengths": {"fgsm_eps_choices": list(pv.fgsm_eps_choices),
                                  "pgd_steps_choices": list(pv.pgd_steps_choices)}}
    rec = evaluate_and_write(model, data.x_test, data.y_test, eval_settings(p), eval_path,
                             name=f"ablation:{a.name}", row=a.label, seed=seed, dataset=data.name,
                             device=dev, progress=progress, extra=extra)
    return _row(rec)


# ------------------------------------------------------------------ driver --
def select_ablations(names=None) -> list[Ablation]:
    if names is None:
        return [a for a in ABLATIONS if a.default]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    return [get_ablation(n) for n in names]


def run_ablations(run, seed: int, data, names=None, progress: bool = True,
                  device: str | None = None) -> list[dict]:
    """Train and evaluate the selected variants (default: every ``default`` one) for one seed.

    Variants that do not apply to the profile (e.g. 5 experts of 3) are
    skipped and listed in the report. Writes ``report/ablations.{json,md}``
    over every seed found, and returns this seed's rows in table order.
    """
    p = run.profile
    rows, skipped = [], {}
    for a in select_ablations(names):
        why = skip_reason(a, p)
        if why:
            skipped[a.name] = why
            continue
        rows.append(run_variant(run, seed, data, a, progress=progress, device=device))
    write_ablation_report(run, skipped)
    return rows


def collect_rows(run) -> list[dict]:
    """Every finished variant of every seed of the run (one row per variant and seed)."""
    out = []
    for path in sorted(Path(run.root).glob("seed-*/ablations/*/eval.json")):
        try:
            out.append(_row(json.loads(path.read_text())))
        except (json.JSONDecodeError, KeyError):
            continue
    return out


def _stats(values: list[float]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return {"mean": statistics.mean(vals), "std": std, "n": len(vals)}


def ablation_table(run) -> list[dict]:
    """Rows aggregated over seeds, in :data:`ABLATIONS` order: SA / PGD-20 / worst case mean and std."""
    per = collect_rows(run)
    order = {a.name: i for i, a in enumerate(ABLATIONS)}
    table = []
    for name in sorted({r["variant"] for r in per}, key=lambda n: order.get(n, len(order))):
        rs = [r for r in per if r["variant"] == name]
        a = BY_NAME.get(name)
        table.append({"variant": name, "label": rs[0]["label"], "question": rs[0]["question"],
                      "experts": rs[0]["experts"], "seeds": sorted(r["seed"] for r in rs),
                      "description": a.description if a else "",
                      **{c: _stats([r[c] for r in rs]) for c in ("SA", "PGD-20", "worst-case")}})
    return table


def _fmt(cell: dict) -> str:
    if cell["mean"] is None:
        return "-"
    if cell["std"] is None or (isinstance(cell["std"], float) and math.isnan(cell["std"])):
        return f"{cell['mean']:.2f}"
    return f"{cell['mean']:.2f} ± {cell['std']:.2f}"


def to_markdown(table: list[dict], skipped: dict | None = None, profile: Profile | None = None) -> str:
    lines = ["# Ablations", "",
             "Accuracy in percent on the run's test set. PGD-20: eps 8/255, step 2/255, random "
             "start, through the whole model (gate included). Worst case: correct both clean "
             "and under PGD-20, per example. Mean ± std over seeds where there are several.", ""]
    if profile is not None:
        lines += [f"Profile `{profile.name}`: end-to-end phase {profile.mixture_epochs} epoch(s), "
                  f"{profile.mixture_batch} clean images per step; fixed strengths = FGSM eps "
                  f"{FIXED_FGSM_EPS}, PGD-{fixed_pgd_steps(profile)}.", ""]
    lines += ["| Variant | Question | Experts | SA | PGD-20 | Worst case | Seeds |",
              "|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['label']} | {r['question']} | {r['experts']} | {_fmt(r['SA'])} | "
                     f"{_fmt(r['PGD-20'])} | {_fmt(r['worst-case'])} | {len(r['seeds'])} |")
    if skipped:
        lines += ["", "Not run for this profile: " + "; ".join(
            f"{BY_NAME[n].label if n in BY_NAME else n} ({why})" for n, why in skipped.items()) + "."]
    lines += ["", "Variants:", ""]
    lines += [f"- **{r['label']}** (`{r['variant']}`): {r['description']}" for r in table]
    return "\n".join(lines) + "\n"


def write_ablation_report(run, skipped: dict | None = None) -> dict:
    table = ablation_table(run)
    rep = {"profile": run.profile.name, "columns": ["SA", "PGD-20", "worst-case"],
           "eval": asdict(eval_settings(run.profile)), "rows": table,
           "per_seed": collect_rows(run), "skipped": skipped or {}}
    run.report_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.report_dir / "ablations.json", json.dumps(rep, indent=1, default=str))
    atomic_write_text(run.report_dir / "ablations.md", to_markdown(table, skipped, run.profile))
    return rep


def report_section(run) -> dict | None:
    """The ablation table as a section of the run's main report (None: no variant run yet)."""
    table = ablation_table(run)
    if not table:
        return None
    p = run.profile
    return {"title": "Ablations the paper left open (%)",
            "notes": ["One change to DWF per row, the same experts and end-to-end phase otherwise "
                      f"({p.mixture_epochs} epoch(s), {p.mixture_batch} clean images per step). "
                      "PGD-20: eps 8/255, step 2/255, random start, through the whole model; worst "
                      "case: correct clean and under PGD-20, per example.",
                      "Details and the variants that did not apply: report/ablations.md."],
            "columns": ["Variant", "Question", "Experts", "SA", "PGD-20", "Worst case", "Seeds"],
            "rows": [[r["label"], r["question"], r["experts"], _fmt(r["SA"]), _fmt(r["PGD-20"]),
                      _fmt(r["worst-case"]), len(r["seeds"])] for r in table]}


def bar_chart(table: list[dict], title: str = "Ablations: clean, PGD-20 and worst-case accuracy"):
    """A grouped plotly bar chart of an :func:`ablation_table`."""
    import plotly.graph_objects as go
    fig = go.Figure()
    labels = [r["label"] for r in table]
    for col, name in (("SA", "SA"), ("PGD-20", "PGD-20"), ("worst-case", "Worst case")):
        fig.add_bar(x=labels, y=[r[col]["mean"] for r in table], name=name,
                    error_y=dict(type="data", array=[r[col]["std"] or 0 for r in table], visible=True),
                    hovertemplate="%{x}: %{y:.1f}%<extra>" + name + "</extra>")
    fig.update_layout(barmode="group", title=title, yaxis_title="accuracy (%)",
                      yaxis_range=[0, 100], legend_title="metric")
    return fig
