"""Command line: ``python -m dwf_lab <command> [--profile P] [--run NAME] [--set key=value ...]``.

    course     run the numbered notebooks headlessly with papermill (the main job), then render
               them as a static site (--scope core|full; --site-only: only the site;
               --student-copy DIR: only write the notebooks without their solutions to DIR)
    site       render a run's executed notebooks as a static site, runs/<run>/site/ (opens offline;
               --out DIR: anywhere, a folder to copy to a static host or zip)
    run        train every stage, evaluate and report, without Jupyter
    train      train stages (--stage all|experts|baselines|mixture|<kind>|<name>)
    evaluate   evaluate finished stages (Tables 2-4 protocol); with --checkpoint FILE or --model
               package.module:factory, a model no run trained: protocol, adaptive attacks,
               checklist and report into --out DIR (default runs/external/<name>)
    adaptive   AutoAttack, gate-aware and transfer attacks, worst case, gradient-masking checklist
    convergence  the headline model's worst case at its attacks' budget and at twice it, on the same
               images (--model NAMES, default mixture): robust accuracy against attack compute and
               whether it converged, into the report
    baselines  SoE, ADVMoE and the uniform ensemble, trained and evaluated like the rest
    ablations  the paper's open ablations (experts, freezing, routing, strengths, batch mix)
    report     write Tables 2-3 and Figures 6-7 beside the paper's numbers
    profiles   list the profiles and their settings
    inspect    print a checkpoint's metadata (never unpickles)
    pack       write one archive of a run (settings, models, results, report, entries, model cards,
               a manifest of sha256s) to hand on
    unpack     verify an archive (a path or an http(s)/file URL) and install it as a run
    bundle     confirm each evaluated model's worst case in fp32, image by image, and write its
               bundle: the adversarial images (RobustBench's .pt layout), the entry, the sha256s
    verify     check a bundle with one forward pass (clean and robust accuracy, the eps-ball, the
               [0, 1] box, the hashes); one line per mismatch and exit 1

A mistake (a bad setting, a missing run, a dataset that cannot be used, a damaged config.json,
a run another process is using) prints one line ``dwf-lab: error: ...`` and exits with 2,
before anything is written; ``--debug`` shows the traceback instead.
"""
import argparse
import json
import sys


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m dwf_lab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="show the traceback of an error")

    def parser(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[debug])

    def attack_flags(sp, which: str):
        sp.add_argument("--redo", default="", metavar="ATTACKS",
                        help=f"{which}comma-separated attack keys to run again although stored "
                             "(e.g. autoattack); the new results replace the old")
        sp.add_argument("--aa", choices=("profile", "standard"), default="profile",
                        help=f"{which}the official AutoAttack at the profile's budget (default; reduced "
                             "below the paper profile, and labelled so) or at its full standard budget")

    def common(sp, stage=False):
        sp.add_argument("--profile", default=None, help="smoke | laptop | paper (default: $DWF_PROFILE or laptop; evaluate, adaptive and report --run NAME: the run's own settings)")
        sp.add_argument("--run", default=None, help="run directory name under runs/ (default: the profile's name)")
        sp.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override one profile field, e.g. --set width=0.25 --set seeds=0,1")
        sp.add_argument("--seeds", default=None, help="comma-separated seeds (overrides the profile)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")
        if stage:
            sp.add_argument("--stage", default="all",
                            help="all | experts | baselines | mixture | a kind (fgsm) | a stage (pgd-2); "
                                 "adaptive also: soe | advmoe | uniform-ensemble")

    course_p = parser("course", help="run the notebooks headlessly (papermill), then build the static site")
    common(course_p)
    course_p.add_argument("--scope", choices=("core", "full"), default=None,
                          help="core: what fits an evening on a laptop (default, or $DWF_COURSE_SCOPE); full: "
                               "every model under every attack, every baseline, every ablation")
    course_p.add_argument("--site-only", action="store_true",
                          help="only (re)build runs/<run>/site/ from the executed notebooks")
    course_p.add_argument("--student-copy", default=None, metavar="DIR",
                          help="only write the notebooks to DIR for students: every solution cell replaced "
                               "by a note, solutions = False (nothing is run)")
    site_p = parser("site", help="render a run's executed notebooks as a static site (runs/<run>/site/)")
    site_p.add_argument("run_name", nargs="?", default=None, metavar="RUN",
                        help="a run name under runs/ ($DWF_RUNS_DIR) or a run folder "
                             "(default: $DWF_PROFILE's or laptop's run)")
    site_p.add_argument("--out", default=None, metavar="DIR",
                        help="write the site to DIR (default runs/<run>/site/): a self-contained folder to "
                             "copy to any static web host, or zip and hand out")
    run_p = parser("run", help="train + evaluate + report without Jupyter")
    common(run_p, stage=True)
    run_p.add_argument("--beyond", action="store_true",
                       help="also SoE/ADVMoE/uniform ensemble, adaptive attacks and ablations")
    common(parser("train", help="train stages"), stage=True)
    launch_p = parser("launch", help="the whole run as jobs (each stage per seed, then the mixture, the "
                                     "evaluations, the report) through submitit: on SLURM or on this machine")
    common(launch_p)
    launch_p.add_argument("--executor", choices=("local", "slurm"), default="local",
                          help="local: processes on this machine, --slots at once; slurm: one job per node "
                               "of the graph with afterok dependencies and requeue")
    launch_p.add_argument("--slots", type=int, default=2, help="local: jobs at once (one per GPU or CPU slot)")
    launch_p.add_argument("--gpus", type=int, default=0, help="GPUs per job")
    launch_p.add_argument("--hours", type=float, default=24.0, help="each job's time limit (requeued past it)")
    launch_p.add_argument("--partition", default=None, help="slurm: the partition")
    evaluate_p = parser("evaluate", help="evaluate finished stages, or a model from elsewhere")
    common(evaluate_p, stage=True)
    evaluate_p.add_argument("--checkpoint", default=None, metavar="FILE",
                            help="a kit checkpoint (.safetensors) to evaluate without a run")
    evaluate_p.add_argument("--model", default=None, metavar="PACKAGE.MODULE:FACTORY",
                            help="any nn.Module taking images in [0, 1], built by calling the factory "
                                 "(e.g. dwf_lab.models.examples:torchvision_resnet18)")
    evaluate_p.add_argument("--model-arg", dest="model_args", action="append", default=[], metavar="KEY=VALUE",
                            help="a keyword argument of the --model factory, e.g. --model-arg num_classes=10")
    evaluate_p.add_argument("--name", default=None, help="--checkpoint/--model: the model's name in the "
                            "results (default: the factory's name or the checkpoint's stage or file name)")
    evaluate_p.add_argument("--out", default=None, metavar="DIR",
                            help="--checkpoint/--model: output folder (default: runs/external/<name>)")
    evaluate_p.add_argument("--n-test", dest="n_test", type=int, default=None, metavar="N",
                            help="--checkpoint/--model: number of test images (default: the profile's n_test)")
    attack_flags(evaluate_p, "--checkpoint/--model: ")
    adaptive_p = parser("adaptive", help="attacks beyond the paper + checklist")
    common(adaptive_p, stage=True)
    attack_flags(adaptive_p, "")
    convergence_p = parser("convergence", help="the worst case at the attacks' budget and at twice it")
    common(convergence_p)
    convergence_p.add_argument("--model", dest="models", default="mixture", metavar="NAMES",
                               help="comma-separated models (default: mixture, DWF; e.g. mixture,pgd-at)")
    common(parser("baselines", help="SoE, ADVMoE, uniform ensemble"))
    common(parser("ablations", help="the ablation table"))
    common(parser("report", help="write the report"))
    bundle_p = parser("bundle", help="fp32 confirmation and a checkable bundle per evaluated model")
    common(bundle_p)
    bundle_p.add_argument("--model", dest="models", default=None, metavar="NAMES",
                          help="comma-separated model names (default: every model with a worst case)")
    verify_p = parser("verify", help="check a bundle with one forward pass")
    verify_p.add_argument("bundle", metavar="BUNDLE", help="a bundle folder (runs/<run>/bundles/<model>_seed<k>)")
    verify_p.add_argument("--checkpoint", default=None, metavar="FILE",
                          help="the model's checkpoint (default: the one bundle.json names)")
    parser("profiles", help="list profiles")
    ins = parser("inspect", help="print a checkpoint's metadata")
    ins.add_argument("path")
    pack_p = parser("pack", help="write one archive of a run (tar.gz with a manifest of sha256s)")
    pack_p.add_argument("run_name", metavar="RUN", help="a run name under runs/ ($DWF_RUNS_DIR) or a run folder")
    pack_p.add_argument("--out", default=None, metavar="PATH",
                        help="the archive's path or folder (default: ./RUN.tar.gz)")
    unpack_p = parser("unpack", help="verify a run archive and install it as a run")
    unpack_p.add_argument("source", metavar="ARCHIVE_OR_URL", help="a .tar.gz written by pack, or its "
                          "http(s):// or file:// URL")
    unpack_p.add_argument("--name", default=None, help="install under this run name (default: the packed one)")
    unpack_p.add_argument("--sha256", default=None, metavar="HEX",
                          help="the archive's own sha256 (printed by pack), checked before anything is read")
    return ap


def _profile(args):
    from dwf_lab.core.config import get_profile, parse_sets
    sets = parse_sets(args.sets)
    if args.seeds and "seeds" in sets:
        raise ValueError(f"the seeds are given twice (--set seeds={sets['seeds']} and --seeds {args.seeds}); "
                         "give them once")
    if args.seeds:   # "0,1,2" or a range "0-4"
        lo, dash, hi = args.seeds.partition("-")
        ranged = dash and lo.isdigit() and hi.isdigit() and int(lo) <= int(hi)
        sets["seeds"] = ",".join(map(str, range(int(lo), int(hi) + 1))) if ranged else args.seeds
    stored = _stored_settings(args) if args.command in READS_THE_RUN and args.profile is None else None
    if stored is not None:   # the run's own settings, then --set on top (Run.open refuses a conflict)
        name = stored.pop("name")
        try:
            get_profile(name, **stored)
        except ValueError as e:   # the file's mistake, not the command's: say which file
            from dwf_lab.store.runs import runs_dir
            raise ValueError(f"run {args.run!r}: {runs_dir() / args.run / 'config.json'} holds settings this "
                             f"dwf-lab cannot use ({e}); restore the file, or delete the run folder to start "
                             "it over") from None
        return get_profile(name, **{**stored, **sets})
    return get_profile(args.profile, **sets)


# commands that only read a run: without --profile they take its settings from its config.json
READS_THE_RUN = ("evaluate", "adaptive", "report", "convergence")


def _stored_settings(args) -> dict | None:
    """The settings in runs/<--run>/config.json, or None when there is no readable one (then the
    command goes on with --profile's and Run.open says what is wrong with the run)."""
    from dwf_lab.store.runs import read_config, runs_dir
    if not args.run:
        return None
    try:
        stored = (read_config(runs_dir() / args.run) or {}).get("profile")
    except (OSError, ValueError):   # a damaged one (RunConfigMismatch), an unreadable folder
        return None
    return dict(stored) if stored and isinstance(stored.get("name"), str) else None


# the user's mistakes (bad settings, missing or busy runs, unusable files and folders, damaged
# JSON -- all ValueError, OSError or RuntimeError subclasses); anything else is a bug: a traceback
USER_ERRORS = (ValueError, OSError, RuntimeError)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"dwf-lab: error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 2


def _verify(args) -> int:
    """``verify BUNDLE``: 0 when every claim holds, else one line per mismatch on stderr and 1."""
    from dwf_lab.pipeline.bundles import verify_bundle
    r = verify_bundle(args.bundle, args.checkpoint)
    for line in r["problems"]:
        print(f"dwf-lab: verify: {line}", file=sys.stderr)
    if r["clean"] is not None:
        print(f"{args.bundle}: clean {r['clean']}/{r['n']}, robust {r['robust']}/{r['n']} "
              f"(one forward pass, {r['seconds']:.1f} s)" + (": every claim holds" if not r["problems"] else ""))
    return 1 if r["problems"] else 0


def _check_stages(p, command: str, which: str) -> None:
    """--stage names stages of this profile (adaptive: also the baselines); else a ValueError."""
    from dwf_lab.training.stages import BASELINE_ROWS, select_stages
    tokens = [t.strip() for t in which.split(",") if t.strip()]
    if command == "adaptive":
        tokens = [t for t in tokens if t not in BASELINE_ROWS]
    if tokens:
        select_stages(p, ",".join(tokens))


def _dispatch(args) -> int:
    if args.command == "profiles":
        from dwf_lab.core.config import PROFILES
        for name, p in PROFILES.items():
            print(f"{name:8s} {p.description}")
        return 0
    if args.command == "inspect":
        from dwf_lab.store.checkpoints import read_metadata
        print(json.dumps(read_metadata(args.path), indent=1))
        return 0
    if args.command in ("pack", "unpack"):
        return _share(args)
    if args.command == "verify":
        return _verify(args)

    if args.command == "evaluate" and (args.checkpoint or args.model):
        return _evaluate_external(args)
    if args.command == "evaluate" and (args.model_args or args.name or args.out or args.n_test is not None
                                       or args.redo or args.aa != "profile"):
        raise ValueError("--model-arg, --name, --out, --n-test, --redo and --aa go with evaluate --checkpoint "
                         "FILE or --model package.module:factory (a run's models: python -m dwf_lab adaptive)")

    if args.command == "site" or (args.command == "course" and args.site_only):
        return _site(args)
    if args.command == "course" and args.student_copy:
        from dwf_lab.course.student import student_copy
        written = student_copy(args.student_copy)
        print(f"student copy: {len(written)} notebook(s) without their solutions in {written[0].parent}")
        return 0

    if args.command == "launch":
        from dwf_lab.pipeline.launch import launch
        p = _profile(args)
        states = launch(p, args.run or p.name, args.executor, args.slots, args.gpus, args.hours, args.partition)
        print(json.dumps(states, indent=1))
        return 0
    from dwf_lab.core import distributed
    from dwf_lab.pipeline import run_all
    from dwf_lab.store.runs import Run
    from dwf_lab.training.builders import load_data
    # everything is checked before a run folder is made: settings, stages, the run, the data
    p = _profile(args)
    progress = not args.quiet
    name = args.run or p.name
    if hasattr(args, "stage"):
        _check_stages(p, args.command, args.stage)
    if args.command in ("evaluate", "adaptive", "report", "bundle", "convergence"):
        run = Run.open(name, p)   # a run that does not exist is an error, never created
        if args.command == "report":
            paths = run_all.report_run(run)
            print(json.dumps({k: str(v) for k, v in paths.items()}, indent=1))
            return 0
    data = load_data(p)
    from dwf_lab.store.runs import check_not_busy, runs_dir
    from dwf_lab.training.preflight import preflight
    preflight(p, data, args.command, getattr(args, "stage", None), runs_dir() / name)   # device, batches, memory
    if args.command == "bundle":
        from dwf_lab.pipeline.bundles import write_bundles
        with run.lock("bundle"):
            for b in write_bundles(run, data, args.models, progress=progress):
                c = b["fp32_confirmation"]
                print(f"{b['row']} seed {b['seed']}: clean {b['clean']['correct']}/{b['n']}, robust (fp32) "
                      f"{b['robust']['correct']}/{b['n']} (stored, {b['stored_worst_case']['precision']}: "
                      f"{b['stored_worst_case']['correct']}); broken only in the stored verdict: "
                      f"{len(c['broken_only_stored'])}, only in fp32: {len(c['broken_only_fp32'])}")
        return 0
    if args.command not in ("evaluate", "adaptive", "convergence"):
        if distributed.env_world_size() == 1:   # (under torchrun each rank takes its own lock)
            check_not_busy(name, runs_dir() / name)   # a held run is refused before config.json is touched
        run = Run(name, p)
    if args.command in ("train", "evaluate") and distributed.env_world_size() == 1:
        check_not_busy(name, run.root)   # not while a command holds the whole run (pack, adaptive, ...)
        return _work(args, p, run, data, progress)   # each stage / model is locked on its own: processes share a run
    with run.lock(args.command):
        return _work(args, p, run, data, progress)


def _evaluate_external(args) -> int:
    """evaluate --checkpoint FILE / --model SPEC: a model no run trained (dwf_lab.pipeline.external);
    the data and the model are checked before anything is written."""
    from dwf_lab.core.runtime import Runtime
    from dwf_lab.models.external import parse_model_args
    from dwf_lab.pipeline import external
    from dwf_lab.training.builders import load_data
    if args.checkpoint and args.model:
        raise ValueError("pass --checkpoint FILE or --model package.module:factory, not both")
    if args.run or args.stage != "all":
        raise ValueError("evaluate --checkpoint/--model writes into --out DIR: it takes no --run or --stage")
    if args.model_args and not args.model:
        raise ValueError("--model-arg goes with --model package.module:factory")
    if args.n_test is not None:
        if any(s.partition("=")[0] == "n_test" for s in args.sets):
            raise ValueError(f"n_test is given twice (--n-test {args.n_test} and --set n_test=...); give it once")
        args.sets.append(f"n_test={args.n_test}")
    kwargs = parse_model_args(args.model_args)
    p = _profile(args)
    data = load_data(p)
    dev = Runtime.from_profile(p).device
    if args.checkpoint:
        ext = external.from_checkpoint(args.checkpoint, data, args.name, dev)
    else:
        ext = external.from_spec(args.model, data, kwargs, args.name, dev)
    command = ["python -m dwf_lab evaluate",
               f"--checkpoint {args.checkpoint}" if args.checkpoint else f"--model {args.model}",
               *(f"--model-arg {a}" for a in args.model_args), f"--profile {p.name}",
               *(f"--set {s}" for s in args.sets), *([f"--name {args.name}"] if args.name else []),
               *(["--aa standard"] if args.aa == "standard" else [])]
    paths = external.evaluate_external(ext, p, data, args.out, progress=not args.quiet, command=" ".join(command),
                                       adaptive_settings=_adaptive_settings(args, p), redo=_redo(args))
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=1))
    return 0


def _adaptive_settings(args, p):
    """adaptive / evaluate --checkpoint/--model: the profile's attack settings, with --aa standard the
    official AutoAttack at its full standard budget; None: the profile's own."""
    if args.aa != "standard":
        return None
    from dwf_lab.evaluation.adaptive import AdaptiveSettings
    return AdaptiveSettings.from_profile(p).standard_autoattack()


def _redo(args) -> list[str]:
    return [k.strip() for k in args.redo.split(",") if k.strip()]


def _site(args) -> int:
    """site [RUN] / course --site-only: render the run's executed notebooks as a static site."""
    from pathlib import Path

    from dwf_lab.core.config import get_profile
    from dwf_lab.course.site import build_site
    from dwf_lab.store.runs import runs_dir
    name = args.run_name if args.command == "site" else args.run
    name = name or get_profile(getattr(args, "profile", None)).name
    root = Path(name) if ("/" in name or name.startswith(".")) else runs_dir() / name
    if not root.is_dir():
        raise FileNotFoundError(f"no run {name!r} at {root}: run the course first (python -m dwf_lab course "
                                f"--run {Path(name).name}), or check the name and $DWF_RUNS_DIR")
    index = build_site(root, out_dir=getattr(args, "out", None))
    print(f"site: {index} (open it in a browser; it loads nothing from the internet)")
    return 0


def _share(args) -> int:
    """pack RUN: refresh the run's report (entries, model cards), then write its archive; unpack
    ARCHIVE_OR_URL: verify it and install it as a run (dwf_lab.store.archive)."""
    from dwf_lab.core.runtime import package_versions
    from dwf_lab.pipeline.run_all import report_run
    from dwf_lab.store import archive
    if args.command == "pack":
        def refresh(run):   # the entries and model cards in the archive match the stored results
            if any(run.eval_dir.glob("*.json")):
                report_run(run)
        out = archive.pack_run(archive.resolve_run(args.run_name), args.out, refresh=refresh)
        print(f"packed run {out['run']}: {out['files']} files -> {out['path']} "
              f"({out['bytes'] / 1e6:.1f} MB, sha256 {out['sha256']})")
        print(f"install it with: python -m dwf_lab unpack {out['path']} --sha256 {out['sha256']}")
        return 0
    done = archive.unpack_archive(args.source, name=args.name, sha256=args.sha256)
    packed_with, here = done["manifest"].get("dwf_lab"), package_versions().get("dwf_lab")
    if packed_with != here:
        print(f"dwf-lab: warning: the run was packed with dwf-lab {packed_with}; this is {here}", file=sys.stderr)
    what = "installed" if done["installed"] else "already there with the same files, nothing changed:"
    print(f"{what} run {done['run']} at {done['root']} ({done['files']} files verified against the manifest)")
    command = archive.run_command(archive.stored_profile(done["root"]), done["run"])
    print(f"its finished stages count as trained: `{command}` and the notebooks (run_name={done['run']!r}) "
          "load them instead of training")
    return 0


def _work(args, p, run, data, progress: bool) -> int:
    from dwf_lab.pipeline import reproduce, run_all
    if args.command == "course":
        from dwf_lab.course.runner import run_course
        run_course(p, run_name=run.name, sets=args.sets + ([f"seeds={args.seeds}"] if args.seeds else []),
                   scope=args.scope)
        return 0
    if args.command == "run":
        del data   # run_all loads it again (it was loaded above only to check it)
        run = run_all.run_all(p, run.name, args.stage, progress, beyond=args.beyond)
        print(f"report: {run.report_dir / 'report.md'}")
        return 0
    for seed in p.seeds:
        if args.command == "train":
            reproduce.train_run(run, seed, data, args.stage, progress)
        elif args.command == "evaluate":
            reproduce.evaluate_run(run, seed, data, args.stage, progress)
        elif args.command == "baselines":
            from dwf_lab.pipeline.baselines import train_and_evaluate_baselines
            train_and_evaluate_baselines(run, seed, data, progress=progress)
        elif args.command == "ablations":
            from dwf_lab.pipeline.ablations import run_ablations
            run_ablations(run, seed, data, progress=progress)
        elif args.command == "adaptive":
            from dwf_lab.pipeline.adaptive import evaluate_adaptive_run
            evaluate_adaptive_run(run, seed, data, _adaptive_settings(args, run.profile), progress=progress, which=args.stage,
                                  redo=_redo(args))
        elif args.command == "convergence":
            from dwf_lab.pipeline.convergence import convergence_run
            for c in convergence_run(run, seed, data, which=args.models, progress=progress):
                print(f"{c['row']} seed {seed}: {c['sentence']}")
    if args.command in ("adaptive", "baselines", "ablations", "convergence"):
        run_all.report_run(run, data=data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
