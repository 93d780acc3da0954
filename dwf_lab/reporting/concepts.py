"""Figures and readings for the concepts notebooks 05-08 teach beside the paper's protocol.

Each figure is a plain plotly figure (a slider in it is plotly's own: it works in a static page,
without a kernel) and each reading is markdown whose every number is computed from the
arguments, never typed in:

- :func:`steering_figure`: the gate-steering attack over a grid of λ (the states of
  :func:`dwf_lab.evaluation.steering.steering_sweep`), with a slider over λ;
- :func:`landscape_figure` / :func:`landscape_markdown`: the loss along the gradient's sign and
  along a random sign (:func:`dwf_lab.evaluation.landscape.loss_landscape`);
- :func:`gradient_figure` / :func:`gradient_markdown`: input gradients beside the images;
- :func:`sandwich_markdown`: "certified ≤ true robust ≤ attacked" as numbers
  (:func:`dwf_lab.evaluation.certified.sandwich`);
- :func:`bug_markdown`: PGD with one bug at a time beside the paper's own numbers
  (:func:`dwf_lab.evaluation.attack_bugs.bug_table`);
- :func:`headline_markdown`: notebook 06's three numbers for DWF beside PGD-AT's;
- :func:`collapsed`: long markdown behind a ``<details>`` fold.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dwf_lab.evaluation.records import key_n
from dwf_lab.reporting.figures import TEMPLATE, image_grid
from dwf_lab.reporting.paper import paper_value
from dwf_lab.reporting.render import markdown_table

TARGET_COLOR, OTHER_COLOR = "#e45756", "#9ecae9"
ACC_COLOR, W_COLOR = "#4c78a8", "#e45756"


def collapsed(summary: str, markdown: str, open_: bool = False) -> str:
    """``markdown`` behind a fold whose title is ``summary`` (HTML ``<details>``)."""
    return f"<details{' open' if open_ else ''}><summary>{summary}</summary>\n\n{markdown}\n\n</details>"


# ------------------------------------------------------------------ λ slider --
def _lam_label(lam) -> str:
    return "clean" if lam is None else f"λ = {lam:g}"


def steering_figure(rows: Sequence[Mapping], expert_names: Sequence[str], k: int = 0, steps: int | None = None,
                    active: int = 1) -> go.Figure:
    """Left: the gate's mean weight on each expert at the attacked images of one λ (expert ``k``,
    the target, in red); right: accuracy (%) and the target's weight (%) over every λ, with the
    slider's λ marked. The slider moves through ``rows`` (clean first)."""
    labels = [_lam_label(r["lam"]) for r in rows]
    acc = [float(r["accuracy"]) for r in rows]
    wt = [100.0 * float(r["w_target"]) for r in rows]
    names = list(expert_names)
    colors = [TARGET_COLOR if i == k else OTHER_COLOR for i in range(len(names))]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.5, 0.5],
                        subplot_titles=("gate's mean weight per expert", "as λ grows"))

    def title(i: int) -> str:
        what = "clean images" if rows[i]["lam"] is None else \
            f"gate-steering PGD{'-' + str(steps) if steps else ''}, {labels[i]}"
        return (f"{what}: accuracy {acc[i]:.1f}%, weight on {names[k]} {wt[i]:.1f}%")

    a = max(0, min(active, len(rows) - 1))
    fig.add_trace(go.Bar(x=names, y=list(rows[a]["weights"]), marker_color=colors, name="gate weight",
                         showlegend=False), row=1, col=1)
    fig.add_trace(go.Scatter(x=labels, y=acc, mode="lines+markers", name="accuracy (%)",
                             line=dict(color=ACC_COLOR)), row=1, col=2)
    fig.add_trace(go.Scatter(x=labels, y=wt, mode="lines+markers", name=f"weight on {names[k]} (%)",
                             line=dict(color=W_COLOR, dash="dot")), row=1, col=2)
    fig.add_trace(go.Scatter(x=[labels[a], labels[a]], y=[acc[a], wt[a]], mode="markers", name="slider's λ",
                             marker=dict(size=14, color="rgba(0,0,0,0)", line=dict(width=2, color="black"))),
                  row=1, col=2)
    steps_ = [dict(method="update", label=labels[i],
                   args=[{"y": [list(rows[i]["weights"]), acc, wt, [acc[i], wt[i]]],
                          "x": [names, labels, labels, [labels[i], labels[i]]]},
                         {"title.text": title(i)}]) for i in range(len(rows))]
    top = max(0.05, max(max(r["weights"]) for r in rows))
    fig.update_yaxes(range=[0, min(1.0, 1.1 * top)], title_text="mean weight", row=1, col=1)
    fig.update_yaxes(range=[0, 100], title_text="%", row=1, col=2)
    fig.update_layout(template=TEMPLATE, height=430, width=980, title=title(a),
                      sliders=[dict(active=a, steps=steps_, currentvalue=dict(prefix="shown: "), pad=dict(t=40))],
                      legend=dict(orientation="h", y=-0.45, x=0.55), margin=dict(l=40, r=20, t=70, b=40))
    return fig


def steering_markdown(rows: Sequence[Mapping], expert_name: str) -> str:
    """What the λ grid shows, computed: the weight on the target and the accuracy at the smallest
    and the largest λ, and what the two moves together mean."""
    att = [r for r in rows if r["lam"] is not None]
    if len(att) < 2:
        return "One λ only: nothing to compare."
    lo, hi = att[0], att[-1]
    dw, da = 100 * (hi["w_target"] - lo["w_target"]), hi["accuracy"] - lo["accuracy"]
    moved = "rises" if dw > 0.5 else ("falls" if dw < -0.5 else "barely moves")
    fell = "falls" if da < 0 else ("rises" if da > 0 else "does not move")
    text = (f"From λ = {lo['lam']:g} to λ = {hi['lam']:g} the gate's weight on {expert_name} {moved} "
            f"({100 * lo['w_target']:.1f}% → {100 * hi['w_target']:.1f}%) and the accuracy {fell} "
            f"({lo['accuracy']:.1f}% → {hi['accuracy']:.1f}%).")
    if dw > 0.5 and da < 0:
        text += (f" The attacker steers the gate, and the mixture follows {expert_name} down: its robustness "
                 "depended on where the gate routes attacked images.")
    elif dw > 0.5:
        text += (" The attacker steers the gate, but at this λ the pull on the gate costs it the climb of the "
                 "loss: the two goals compete (the battery's `routing` attack balances them and keeps any "
                 "iterate that fools the mixture).")
    else:
        text += " The gate resists the pull at these λ: steering it is not what breaks this mixture."
    return text


# ------------------------------------------------------------ loss landscape --
def landscape_figure(landscape: Mapping[str, Mapping[str, Sequence[float]]], radii: Sequence[float],
                     eps: float) -> go.Figure:
    """One panel per model: the mean loss along the gradient's sign and along a random sign, over
    the radius in pixel levels (×255), ε marked."""
    names = list(landscape)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True,
                        horizontal_spacing=0.03)
    xs = [r * 255 for r in radii]
    for j, name in enumerate(names, 1):
        for d, color in (("sign-gradient", "#e45756"), ("random", "#4c78a8")):
            fig.add_trace(go.Scatter(x=xs, y=list(landscape[name][d]), mode="lines+markers", name=d,
                                     line=dict(color=color), legendgroup=d, showlegend=j == 1), row=1, col=j)
        fig.add_vline(x=eps * 255, line_dash="dash", line_color="grey", row=1, col=j)
    fig.update_xaxes(title_text="r × 255")
    fig.update_yaxes(title_text="mean cross-entropy", row=1, col=1)
    fig.update_layout(template=TEMPLATE, height=360, width=max(520, 250 * len(names) + 120),
                      title="Loss at x + r · d: d the sign of the input gradient, or a random sign",
                      legend=dict(orientation="h", y=-0.25))
    return fig


def landscape_markdown(rise: Mapping[str, Mapping[str, float]], eps: float) -> str:
    """One line per model: how much the loss rose by ε along each direction, and their ratio."""
    lines = []
    for name, r in rise.items():
        g, rd, ratio = r["sign-gradient"], r["random"], r["ratio"]
        if g <= 1e-9 and rd > 1e-9:
            what = "the gradient's direction does not climb at all while a random one does: the gradient is masked"
        elif abs(g) <= 1e-9 and abs(rd) <= 1e-9:
            what = "neither direction climbs: the loss is flat here (a zero gradient, or a saturated loss)"
        elif ratio == float("inf"):
            what = "only the gradient's direction climbs"
        elif ratio >= 3:
            what = f"the gradient's direction climbs {ratio:.0f}× as fast as a random one: the gradient points uphill"
        elif ratio > 1:
            what = f"the gradient's direction climbs {ratio:.1f}× as fast as a random one"
        else:
            what = "a random direction climbs as fast or faster: the gradient is not a good guide here"
        lines.append(f"- **{name}**: by r = {eps * 255:.0f}/255 the loss rises {g:+.3f} along the gradient's sign, "
                     f"{rd:+.3f} along a random sign — {what}.")
    return "\n".join(lines)


# ----------------------------------------------------------- input gradients --
def gradient_figure(images, study: Mapping[str, Mapping], size: int = 96) -> go.Figure:
    """The images in the first row, each model's input gradients (grey = 0) in one row below."""
    n = len(images)
    pictures = list(images)
    titles = [f"image {i}" for i in range(n)]
    for name, s in study.items():
        pictures += list(s["pictures"][:n])
        titles += [f"{name}" if i else f"{name} (alignment {s['alignment']:.2f})" for i in range(n)]
    return image_grid(pictures, titles, cols=n, size=size,
                      title="Input gradients ∇ₓℓ (grey = 0): noise, or the object's edges?")


def gradient_markdown(study: Mapping[str, Mapping]) -> str:
    """The mean edge alignment per model, highest first, and which model's gradient follows edges most."""
    ranked = sorted(study.items(), key=lambda kv: -kv[1]["alignment"])
    lines = [f"- **{name}**: mean correlation of |∇ₓℓ| with the image's edges {s['alignment']:.2f}"
             for name, s in ranked]
    best, worst = ranked[0], ranked[-1]
    if len(ranked) > 1 and best[1]["alignment"] - worst[1]["alignment"] > 0.05:
        lines.append(f"\n{best[0]}'s gradient follows the edges most, {worst[0]}'s least "
                     f"({best[1]['alignment']:.2f} against {worst[1]['alignment']:.2f}).")
    elif len(ranked) > 1:
        lines.append("\nThe models' gradients follow the edges about equally here (within 0.05).")
    return "\n".join(lines)


# ----------------------------------------------------------- the sandwich --
def sandwich_markdown(s: Mapping, net=None, trained=None) -> str:
    """"certified ≤ true robust ≤ attacked ≤ clean" with the numbers of
    :func:`dwf_lab.evaluation.certified.sandwich` (and, given ``net`` and ``trained``, the
    :class:`~dwf_lab.evaluation.certified.IBPTraining` behind it, how the network was trained)."""
    eps = float(s["eps"])
    gap = s["attacked"] - s["certified"]
    head = (f"On {s['n']} test images at ε = {eps * 255:.0f}/255: **certified {s['certified']:.1f}% ≤ true robust "
            f"accuracy ≤ {s['attacked']:.1f}% under {s['attack']} ≤ {s['clean']:.1f}% clean**.")
    if trained is not None:
        params = f"{sum(q.numel() for q in net.parameters()):,} parameters, " if net is not None else ""
        head = (f"The network ({params}trained with the IBP loss for {trained.epochs:g} epoch(s), {trained.steps} "
                f"steps, in {trained.seconds:.0f} s). ") + head
    return head + (f" The true robust accuracy lies somewhere in the {gap:.1f}-point gap: an image there is neither "
                   "proved robust nor broken. No image is both certified and broken (checked).")


# ------------------------------------------------------------ attack bugs --
def bug_table_markdown(rows: Sequence[Mapping]) -> str:
    """The rows of :func:`dwf_lab.evaluation.attack_bugs.bug_table` as a markdown table (accuracies in %;
    ``same as FGSM``: the share of images where the last PGD's verdict is FGSM at ε's)."""
    if not rows:
        return "_(nothing to show)_"
    cols = [k for k in rows[0] if k not in ("same_as_fgsm",)]
    shown = [{**{k: r[k] for k in cols}, "same as FGSM": r["same_as_fgsm"]} for r in rows]
    return markdown_table(shown, cols + ["same as FGSM"])


def _paper_pattern(dataset: str | None, row: str) -> dict | None:
    cells = {"FGSM 0.03": paper_value("table2", dataset, row, "0.03"), "PGD-10": paper_value("table3", dataset, row, "10"),
             "PGD-50": paper_value("table3", dataset, row, "50")}
    if any(c is None or c[0] is None for c in cells.values()):
        return None
    return {k: float(c[0]) for k, c in cells.items()}


def bug_markdown(rows: Sequence[Mapping], dataset: str | None = None) -> str:
    """Per model, what each bug did to PGD, in sentences computed from ``rows``
    (:func:`dwf_lab.evaluation.attack_bugs.bug_table`), beside the paper's own numbers for the same
    row (FGSM at 0.03, PGD-10 and PGD-50 of its Tables 2-3) where ``dataset`` has them."""
    by = {(r["model"], r["bug"]): r for r in rows}
    out = []
    for m in dict.fromkeys(r["model"] for r in rows):
        ok = by.get((m, "none"))
        if ok is None:
            continue
        pgd = sorted((k for k in ok if k.startswith("PGD-")), key=lambda k: int(k[4:]))
        first, before, last = pgd[0], pgd[-2] if len(pgd) > 1 else pgd[0], pgd[-1]
        fg = next(k for k in ok if k.startswith("FGSM 0"))
        fg_eps = next(k for k in ok if k.startswith("FGSM") and k.endswith("/255"))
        lines = [f"**{m}** — clean {ok['clean']:.1f}%; one FGSM step: {ok[fg]:.1f}% at {fg[5:]}, {ok[fg_eps]:.1f}% "
                 f"at {fg_eps[5:]}; the correct PGD: {ok[first]:.1f}% after {first[4:]} step(s), {ok[last]:.1f}% "
                 f"after {last[4:]}."]
        at_x = by.get((m, "gradient_at_x"))
        if at_x:
            moved = abs(at_x[last] - at_x[before])
            lines.append(f"- *the gradient at x* (Eq. 4 as printed): {at_x[first]:.1f}% → {at_x[last]:.1f}%, "
                         + (f"flat from {before[4:]} to {last[4:]} steps" if moved < 1e-9 else
                            f"{moved:.1f} points from {before[4:]} to {last[4:]} steps")
                         + f"; its verdict is FGSM at {fg_eps[5:]}'s on {at_x['same_as_fgsm']:.0f}% of the images "
                         f"({at_x[last] - ok[last]:+.1f} points against the correct PGD).")
        nz = by.get((m, "normalized_eps"))
        if nz:
            above = nz[last] > ok[fg]
            lines.append(f"- *ε on normalized inputs*: {nz[last]:.1f}% after {last[4:]} steps, "
                         + (f"ABOVE the pixel-ε FGSM step at {fg[5:]} ({ok[fg]:.1f}%): PGD doing less damage than "
                            "FGSM, the paper's inversion, from an ε on another scale" if above else
                            f"not above the pixel-ε FGSM step at {fg[5:]} ({ok[fg]:.1f}%)")
                         + f" ({nz[last] - ok[last]:+.1f} points against the correct PGD).")
        bn = by.get((m, "bn_train"))
        if bn:
            d = bn[last] - ok[last]
            lines.append(f"- *BatchNorm in train mode*: {bn[last]:.1f}% after {last[4:]} steps, {d:+.1f} points "
                         "against the correct PGD" + (" — a weaker attack." if d > 0 else
                                                      " — no weaker here." if d == 0 else "."))
        pp = _paper_pattern(dataset, m)
        if pp:
            lines.append(f"- *the paper's {m}*: FGSM 0.03 {pp['FGSM 0.03']:.2f}%, PGD-10 {pp['PGD-10']:.2f}%, "
                         f"PGD-50 {pp['PGD-50']:.2f}%: PGD {'ABOVE' if pp['PGD-10'] > pp['FGSM 0.03'] else 'below'} "
                         f"FGSM, and {pp['PGD-10'] - pp['PGD-50']:.2f} points from 10 to 50 steps.")
        out.append("\n".join(lines))
    return "\n\n".join(out)


# -------------------------------------------------------------- headline --
def headline_markdown(records: Sequence[Mapping], pgd_key: str, rows: Sequence[str] = ("DWF", "ResNet-18 (PGD-AT)"),
                      seed: int | None = None) -> str:
    """Notebook 06's three numbers — PGD-k, AutoAttack and the per-image worst case over every
    attack — for DWF beside PGD-AT, from the records of :func:`~dwf_lab.pipeline.adaptive.evaluate_adaptive_run`."""
    cols = {pgd_key: f"PGD-{pgd_key.split('-')[-1]}", "autoattack": "AutoAttack", "worst-case (all)": "worst case (all)"}
    table, found = [], {}
    for name in rows:
        rec = next((r for r in records if r.get("row") == name and (seed is None or r.get("seed") == seed)), None)
        if rec is None:
            continue
        m = rec.get("metrics", {})
        found[name] = m
        table.append({"model": name, **{label: (f"{m[k]:.1f}" if k in m else "—") for k, label in cols.items()},
                      "images": str(key_n(rec, "worst-case (all)") if "worst-case (all)" in m else rec.get("n_test", ""))})
    if not table:
        return "No adaptive results for these models yet."
    text = markdown_table(table, ["model", *cols.values(), "images"])
    notes = []
    for name, m in found.items():
        if pgd_key in m and "worst-case (all)" in m:
            notes.append(f"{name}: {m[pgd_key] - m['worst-case (all)']:.1f} points from {cols[pgd_key]} to the worst case")
    return text + ("\n\n" + "; ".join(notes) + "." if notes else "")


__all__ = ["bug_markdown", "bug_table_markdown", "collapsed", "gradient_figure", "gradient_markdown", "headline_markdown",
           "landscape_figure", "landscape_markdown", "sandwich_markdown", "steering_figure", "steering_markdown"]
