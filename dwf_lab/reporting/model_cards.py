"""A short model card (markdown) per trained model of a run: what it is, how it was trained, what
it scores, and what was not checked.

Everything on a card is read from what the run stored: the checkpoint's metadata (architecture,
width, experts), the run's ``config.json`` (the recipe's settings: epochs, learning rate, batch,
the training attacks, the data), ``seed-<k>/metrics.jsonl`` (epochs run, seconds, the last epoch's
loss and accuracy), the model's RobustBench-style entry (:mod:`dwf_lab.reporting.entries`: the
numbers with their standard errors) and its gradient-masking checklist. The last section lists what
the numbers do not cover (AutoAttack not run or not the standard suite, no certified bound, a
test set smaller than CIFAR-10's 10,000 images, generated data, a checklist item that failed or
did not run, one seed), so a reader knows how far to trust them.

:func:`write_model_cards` writes ``runs/<run>/report/model_cards/<stage>_seed<k>.md``.
"""

from dwf_lab.core.config import Profile
from dwf_lab.core.io import atomic_write_text
from dwf_lab.evaluation.records import load_checklist
from dwf_lab.reporting.entries import FULL_TEST_SET, checkpoint_identity
from dwf_lab.store.runs import Run
from dwf_lab.training.recipes import RECIPES
from dwf_lab.training.stages import Stage, baseline_stages, expert_stage_names, plan_stages

CARDS_DIR = "model_cards"
NOT_KNOWN = "see the run's config.json"

def _stages(p: Profile) -> dict[str, Stage]:
    return {s.name: s for s in plan_stages(p) + baseline_stages(p)}


def training_log(run: Run, seed: int, stage: str) -> dict:
    """Epochs run, seconds and the last epoch's loss/accuracy of a stage, from metrics.jsonl
    (a resumed epoch counts once: its last record)."""
    epochs: dict[int, dict] = {}
    stage_s = []
    for rec in run.metrics(seed):
        if rec.get("stage") != stage:
            continue
        if rec.get("event") == "epoch" and isinstance(rec.get("epoch"), int):
            epochs[rec["epoch"]] = rec
        elif rec.get("event") == "stage_time" and isinstance(rec.get("seconds"), (int, float)):
            stage_s.append(float(rec["seconds"]))
    last = epochs[max(epochs)] if epochs else {}
    return {"epochs": max(epochs) if epochs else None,
            "seconds": sum(float(e.get("seconds") or 0.0) for e in epochs.values()) if epochs else None,
            "stage_seconds": sum(stage_s) if stage_s else None,
            "train_loss": last.get("train_loss"), "train_acc": last.get("train_acc")}


def _what_it_is(run: Run, st: Stage, ident: dict) -> list[str]:
    p = run.profile
    kw = ident.get("arch_kwargs") or {}
    arch = ident.get("arch")
    lines = []
    if arch == "dwf_mixture":
        experts = expert_stage_names(p)
        lines.append(f"- **Architecture:** DWF, a {kw.get('routing', 'soft')}-gated mixture of "
                     f"{kw.get('n_experts')} CIFAR ResNet-18 experts ({', '.join(experts)}), width "
                     f"{kw.get('width')}, gate MLP hidden size {kw.get('gate_hidden')}.")
    elif arch == "resnet18":
        lines.append(f"- **Architecture:** CIFAR ResNet-18, width {kw.get('width')}.")
    elif arch:
        lines.append(f"- **Architecture:** {arch} ({', '.join(f'{k}={v}' for k, v in sorted(kw.items()))}).")
    else:
        lines.append(f"- **Architecture:** unknown ({ident.get('note') or ident.get('problem')}).")
    lines.append(f"- **Input:** images in [0, 1], {kw.get('in_channels', 3)} channels, normalization inside "
                 f"the model; {kw.get('num_classes')} classes.")
    if ident.get("path"):
        lines.append(f"- **Checkpoint:** `{ident['path']}`, file sha256 `{ident.get('file_sha256')}`, "
                     f"weights sha256 `{ident.get('weights_sha256')}`.")
    return lines


def _how_trained(run: Run, seed: int, st: Stage, ident: dict, data_name: str | None) -> list[str]:
    p = run.profile
    log = training_log(run, seed, st.name)
    r = RECIPES.get(st.kind)
    batch = st.batch_size
    batch_text = (f"{batch} clean images per step (x3 with their FGSM and PGD images)"
                  if r is not None and r.model == "mixture" else f"{batch} images per step")
    data = data_name or p.dataset
    generated = data == "synthetic"
    lines = [f"- **Recipe:** {r.card if r else st.kind} (stage `{st.name}`, kind `{st.kind}`).",
             f"- **Data:** {data}, {p.n_train if p.n_train is not None else 'all'} training images"
             + (" (GENERATED images, not a real dataset)" if generated else "") + ".",
             f"- **Optimisation:** SGD, learning rate {p.lr:g} on a cosine schedule, momentum {p.momentum:g}, "
             f"weight decay {p.weight_decay:g}, {batch_text}; {log['epochs'] or 0} of "
             f"{st.epochs} planned epochs logged.",
             f"- **Training attacks:** {r.training_attacks(p) if r else NOT_KNOWN}."]
    if log["seconds"] is not None:
        extra = (f", last epoch's training loss {log['train_loss']:.3f}, accuracy {100 * log['train_acc']:.1f}%"
                 if isinstance(log["train_loss"], (int, float)) and isinstance(log["train_acc"], (int, float)) else "")
        lines.append(f"- **Time:** {log['seconds']:.1f} s of training (the logged epochs){extra}.")
    else:
        lines.append("- **Time:** not in the run's metrics.jsonl.")
    versions = ident.get("versions") or {}
    if versions:
        lines.append("- **Trained with:** " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + ".")
    return lines


def _score(v: dict | None) -> str:
    if not v:
        return "not measured"
    se = f" ± {v['se']:.2f}" if v.get("se") is not None else ""
    return f"{v['acc']:.2f}%{se} ({v['correct']}/{v['n']})"


def _scores(entry: dict | None) -> list[str]:
    if entry is None:
        return ["Not evaluated: the run has no evaluation result for this model "
                "(`python -m dwf_lab evaluate --run RUN --stage STAGE`)."]
    kit = entry["dwf_lab"]
    n = entry["n_examples"]
    lines = [f"On {n} test images of `{entry['dataset']}`, threat model L-inf at eps {entry['eps']} "
             "(± one binomial standard error, in points):", "",
             "| measure | robust accuracy |", "| --- | --- |",
             f"| clean | {_score(kit['clean'])} |"]
    aa = kit["autoattack"]
    lines.append(f"| {aa['label'] if aa['run'] else 'AutoAttack'} | {_score(aa) if aa['run'] else 'not run'} |")
    if kit.get("worst_case"):
        wc = kit["worst_case"]
        lines.append(f"| kit's worst case (`{wc['key']}`, per image over {len(wc['over'])} attacks) | {_score(wc)} |")
    for key, v in kit["attacks"].items():
        if key == "autoattack":
            continue
        note = "" if v["in_threat_model"] else " (larger eps: another threat model)"
        lines.append(f"| `{key}`{note} | {_score(v)} |")
    if aa["run"] and isinstance(aa.get("stages"), dict):
        lines += ["", f"AutoAttack stage by stage (robust accuracy after each attack): {_stages_text(aa['stages'])}."]
    return lines


def _stages_text(stages: dict) -> str:
    """{"clean": 50.0, "apgd-ce": 20.0, ...} (or one such per gradient mode) as text."""
    if all(isinstance(v, (int, float)) for v in stages.values()):
        return ", ".join(f"{k} {v:.2f}%" for k, v in stages.items())
    return "; ".join(f"{mode}: {_stages_text(v)}" for mode, v in stages.items() if isinstance(v, dict))


def _checklist(run: Run, seed: int, stage: str) -> tuple[list[str], list[str]]:
    """(failed, not run) checklist item names; ([], []) plus a flag when there is no checklist."""
    path = run.checklist_path(seed, stage)
    if not path.exists():
        return [], ["the gradient-masking checklist was not run (`python -m dwf_lab adaptive --run "
                    f"{run.name} --stage {stage}`)"]
    try:
        items = load_checklist(path)["items"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [], [f"the gradient-masking checklist {path.name} is unreadable ({type(e).__name__})"]
    failed = [f"gradient-masking checklist FAILED: {i.get('name')}" for i in items if i.get("passed") is False]
    not_run = [f"gradient-masking checklist item not run: {i.get('name')}" for i in items if i.get("passed") is None]
    return failed, not_run


def not_checked(run: Run, seed: int, st: Stage, entry: dict | None, data_name: str | None) -> list[str]:
    """What the card's numbers do not cover, read off the entry, the run and the checklist."""
    out = []
    if entry is None:
        out.append("not evaluated at all")
    else:
        aa = entry["dwf_lab"]["autoattack"]
        if not aa["run"]:
            out.append(f"AutoAttack not run ({aa['note']})")
        elif not aa["standard"]:
            out.append(f"the AutoAttack number is {aa['label']}: not comparable with RobustBench's")
        n = entry["n_examples"]
        if n < FULL_TEST_SET:
            se = (entry["dwf_lab"]["clean"] or {}).get("se")
            out.append(f"only {n} test images (CIFAR-10 has {FULL_TEST_SET}); one standard error is "
                       f"about {se:.1f} points" if se is not None else f"only {n} test images")
        if entry["dwf_lab"]["test_set"].get("test_images_sha256") is None:
            out.append("the test images' hash is not recorded")
        failed, not_run = _checklist(run, seed, st.name)
        out += failed + not_run
    if (data_name or run.profile.dataset) == "synthetic":
        out.append("trained and evaluated on GENERATED images"
                   + ("" if run.profile.dataset == "synthetic" else
                      f" (a fallback: the run asked for {run.profile.dataset})")
                   + ": the numbers say nothing about real images")
    out.append("no certified bound: every number is an attack's, an upper bound on the true robust accuracy")
    if len(run.profile.seeds) < 2:
        out.append("one training seed: the spread between training runs is not measured")
    return out


def model_card(run: Run, seed: int, stage: str, entry: dict | None) -> str:
    """The markdown card of the run's model ``stage`` for ``seed``."""
    st = _stages(run.profile).get(stage) or Stage(stage, stage, 0, 0, stage)
    ident = checkpoint_identity(run, {"model": stage, "seed": seed, "stage_kind": st.kind})
    data_name = entry["dataset"] if entry else None
    title = f"# Model card: {st.row} (`{stage}`), seed {seed}, run `{run.name}`"
    parts = [title, "", "## What it is", *_what_it_is(run, st, ident),
             "", "## How it was trained", *_how_trained(run, seed, st, ident, data_name),
             "", "## What it scores", *_scores(entry),
             "", "## What was not checked", *[f"- {x}" for x in not_checked(run, seed, st, entry, data_name)]]
    if entry is not None:
        parts += ["", f"Entry: `report/entries/{stage}_seed{seed}.json`; reproduce: `{entry['dwf_lab']['command']}`."]
    return "\n".join(parts) + "\n"


def trained_models(run: Run) -> list[tuple[int, str]]:
    """(seed, stage) of every finished model of the run, seeds and stages in order."""
    order = list(_stages(run.profile))
    out = []
    for seed_dir in sorted(run.root.glob("seed-*")):
        try:
            seed = int(seed_dir.name.split("-", 1)[1])
        except ValueError:
            continue
        names = [p.stem for p in (seed_dir / "models").glob("*.safetensors") if not p.name.startswith(".")]
        out += [(seed, s) for s in sorted(names, key=lambda s: (order.index(s) if s in order else len(order), s))]
    return sorted(out, key=lambda t: t[0])


def write_model_cards(run: Run, entries: list[dict]) -> dict:
    """A card per trained model under ``report/model_cards/``; cards of models that are gone are
    removed. Returns {"model_cards_dir": path, "model_cards": [path, ...]}."""
    folder = run.report_dir / CARDS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    by_model = {(e["dwf_lab"]["seed"], e["dwf_lab"]["model"]): e for e in entries}
    written = []
    for seed, stage in trained_models(run):
        path = folder / f"{stage}_seed{seed}.md"
        atomic_write_text(path, model_card(run, seed, stage, by_model.get((seed, stage))))
        written.append(path)
    for old in folder.glob("*.md"):
        if old not in written:
            old.unlink()
    return {"model_cards_dir": folder, "model_cards": written}
