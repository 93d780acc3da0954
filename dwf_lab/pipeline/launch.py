"""A run as a graph of jobs, submitted through submitit: the same graph on SLURM or on one machine.

:func:`job_graph` turns a run into jobs: each training stage per seed (the experts and the
FGSM-AT / PGD-AT baselines are independent), then the mixture per seed (it is assembled from that
seed's experts), then each seed's evaluation, then one report over every seed. :func:`launch`
submits them through submitit (Meta's launcher, the field's habit for SLURM sweeps):

- ``executor="slurm"``: one SLURM job per node of the graph, with ``afterok`` dependencies, GPUs
  per job, a time limit and requeue on time-out or preemption (submitit checkpoints by calling
  the job again; a stage resumes from its own last checkpoint, so a requeued job goes on where it
  stopped);
- ``executor="local"``: the same jobs as processes on this machine, at most ``slots`` at once (one
  per free GPU, or CPU slots), each started when the jobs it depends on have finished.

Jobs on one run work side by side because each stage and each evaluation holds its own lock
(:meth:`dwf_lab.store.runs.Run.lock`); a job whose part another process holds waits for it.
"""
import time
from dataclasses import dataclass, field
from pathlib import Path

from dwf_lab.core.config import Profile
from dwf_lab.pipeline import reproduce, run_all
from dwf_lab.store.runs import Run
from dwf_lab.training.builders import load_data
from dwf_lab.training.recipes import recipe
from dwf_lab.training.stages import plan_stages

EXECUTORS = ("local", "slurm")


@dataclass(frozen=True)
class Job:
    """One node of the graph: ``action`` "train" (one stage of one seed), "evaluate" (one seed)
    or "report" (all seeds); ``after``: the names of the jobs it waits for."""
    name: str
    action: str
    seed: int | None = None
    stage: str | None = None
    after: tuple[str, ...] = field(default=())


def job_graph(p: Profile, seeds=None) -> list[Job]:
    """The run's jobs in an order that respects their dependencies (see the module doc)."""
    jobs: list[Job] = []
    evals = []
    for seed in (p.seeds if seeds is None else seeds):
        independent, mixtures = [], []
        for st in plan_stages(p):
            (mixtures if recipe(st.kind).model == "mixture" else independent).append(st)
        names, experts = [], []
        for st in independent:
            jobs.append(Job(f"train-{st.name}-seed{seed}", "train", seed, st.name))
            names.append(jobs[-1].name)
            if recipe(st.kind).group == "experts":
                experts.append(jobs[-1].name)
        prev = tuple(experts)
        for st in mixtures:       # the gate-only phase, then the mixture: each after the last
            jobs.append(Job(f"train-{st.name}-seed{seed}", "train", seed, st.name, prev))
            prev = (jobs[-1].name,)
            names.append(jobs[-1].name)
        jobs.append(Job(f"evaluate-seed{seed}", "evaluate", seed, None, tuple(names)))
        evals.append(jobs[-1].name)
    jobs.append(Job("report", "report", None, None, tuple(evals)))
    return jobs


def run_job(profile: Profile, run_name: str, job: Job) -> str:
    """What one job does, in the process that runs it (submitit calls this)."""
    run = Run(run_name, profile) if job.action == "train" else Run.open(run_name, profile)
    if job.action == "report":
        run_all.report_run(run)
        return "report"
    data = load_data(profile)
    if job.action == "train":
        reproduce.train_run(run, job.seed, data, job.stage, progress=False)
    else:
        reproduce.evaluate_run(run, job.seed, data, progress=False)
    return job.name


def _executor(kind: str, folder: Path, gpus: int, hours: float, partition: str | None):
    try:
        import submitit  # optional: the "launch" extra
    except ImportError:
        raise RuntimeError("launch needs submitit: pip install submitit (or pip install -e '.[launch]')") from None
    if kind == "local":
        ex = submitit.LocalExecutor(folder=str(folder))
        ex.update_parameters(timeout_min=int(hours * 60), gpus_per_node=gpus)
        return ex
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    ex.update_parameters(timeout_min=int(hours * 60), gpus_per_node=gpus, tasks_per_node=1,
                         slurm_partition=partition, slurm_additional_parameters={"requeue": True})
    return ex


def launch(profile: Profile, run_name: str, executor: str = "local", slots: int = 2, gpus: int = 0,
           hours: float = 24.0, partition: str | None = None, poll_s: float = 2.0) -> dict[str, str]:
    """Submit the run's graph (:func:`job_graph`). Local: wait for it, ``{job: state}``; slurm: ``{job:
    SLURM job id}`` at once (``squeue`` shows the graph). ``slots``: local jobs
    at once. A job that fails stops what depends on it, and :func:`launch` raises naming it."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    folder = Run(run_name, profile).root / "launch"   # the run's folder and config.json, before any job starts
    ex = _executor(executor, folder, gpus, hours, partition)
    jobs = job_graph(profile)
    if executor == "slurm":
        return _slurm(ex, profile, run_name, jobs)
    pending, running, done = list(jobs), {}, {}
    while pending or running:
        for name, sub in list(running.items()):
            if sub.done():
                try:
                    sub.result()
                except Exception as e:   # submitit's error carries the job's traceback: name the job first
                    raise RuntimeError(f"launch: job {name} failed ({type(e).__name__}); its log: "
                                       f"{folder}; what depends on it was not started") from e
                done[name] = "done"
                del running[name]
        ready = [j for j in pending if all(d in done for d in j.after)]
        for j in ready[:max(0, slots - len(running))]:
            running[j.name] = ex.submit(run_job, profile, run_name, j)
            pending.remove(j)
        time.sleep(poll_s if running else 0)
    return done


def _slurm(ex, profile: Profile, run_name: str, jobs: list[Job]) -> dict[str, str]:
    ids: dict[str, str] = {}
    for j in jobs:
        after = [ids[d] for d in j.after]
        ex.update_parameters(name=j.name, slurm_additional_parameters={
            "requeue": True, **({"dependency": "afterok:" + ":".join(after)} if after else {})})
        ids[j.name] = ex.submit(run_job, profile, run_name, j).job_id
    return ids
