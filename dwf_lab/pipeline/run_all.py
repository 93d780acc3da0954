"""Everything a run does, in order: train and evaluate every seed, then (``beyond``) the baselines,
the adaptive attacks and the ablations, then the report with every section that has results."""
import sys

from dwf_lab.core import distributed
from dwf_lab.core.config import Profile
from dwf_lab.data import ImageData
from dwf_lab.pipeline.ablations import run_ablations
from dwf_lab.pipeline.adaptive import evaluate_adaptive_run
from dwf_lab.pipeline.baselines import train_and_evaluate_baselines
from dwf_lab.pipeline.convergence import HEADLINE, convergence_run
from dwf_lab.pipeline.reproduce import evaluate_run, train_run
from dwf_lab.reporting.entries import write_entries
from dwf_lab.reporting.model_cards import write_model_cards
from dwf_lab.reporting.render import (
    ablation_section,
    attribution_section,
    autoattack_section,
    checklist_section,
    confirmation_section,
    convergence_section,
    write_convergence_figure,
    write_report,
)
from dwf_lab.store.runs import Run
from dwf_lab.training.builders import load_data


def report_run(run: Run, dataset: str | None = None, data: ImageData | None = None) -> dict:
    """Tables 2-3 and the "beyond" table from the run's results, then AutoAttack stage by stage,
    the gradient-masking checklists and the ablation table where they exist. ``dataset`` None: the one the results name.
    Then a RobustBench-style entry per evaluated model and a model card per trained model
    (``data``: the run's data, whose test images the entries' hash identifies)."""
    sections = [sec for sec in (autoattack_section(run.eval_dir), attribution_section(run.eval_dir),
                                confirmation_section(run.eval_dir),
                                convergence_section(run), checklist_section(run.report_dir), ablation_section(run))
                if sec is not None]
    written = write_report(run.eval_dir, run.report_dir, dataset, sections=sections)
    figure = write_convergence_figure(run)
    if figure is not None:
        written["convergence.html"] = figure
    entries = write_entries(run, data)
    cards = write_model_cards(run, entries["entries"])
    return {**written, "entries": entries["entries_json"], "model_cards": cards["model_cards_dir"]}


def run_all(p: Profile, run_name: str | None = None, which: str | None = None,
            progress: bool = True, beyond: bool = False) -> Run:
    """Train, evaluate and report every seed of a profile, without Jupyter.

    ``beyond`` adds what the paper did not run itself: SoE, ADVMoE and the uniform
    ensemble under the same protocol, the adaptive attacks with the per-example worst
    case over all of them, and the ablation table.
    """
    run = Run(run_name or p.name, p)
    data = load_data(p)
    print(f"[dwf-lab] run {run.name} at {run.root}: profile {p.name}, data {data.name} "
          f"({len(data.x_train)} train / {len(data.x_test)} test), seeds {list(p.seeds)}",
          file=sys.stderr)
    if distributed.world() > 1:
        # torchrun: every rank trains every seed, then rank 0 alone evaluates and reports
        # (ranks never wait in a collective while rank 0 evaluates)
        for seed in p.seeds:
            train_run(run, seed, data, which, progress)
        if distributed.is_main():
            for seed in p.seeds:
                evaluate_run(run, seed, data, which, progress)
            report_run(run, data.name, data)
        return run
    for seed in p.seeds:
        train_run(run, seed, data, which, progress)
        evaluate_run(run, seed, data, which, progress)
        if beyond:
            if p.baselines:
                train_and_evaluate_baselines(run, seed, data, progress=progress)
            evaluate_adaptive_run(run, seed, data, progress=progress, which=which)
            if run.is_done(seed, HEADLINE):
                convergence_run(run, seed, data, progress=progress)   # the headline model at twice the budget
            run_ablations(run, seed, data, progress=progress)
    report_run(run, data.name, data)
    return run
