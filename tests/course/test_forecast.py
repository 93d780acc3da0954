"""The course's forecast: each notebook priced as its banner prices it, on the run as the notebooks
before it leave it; said and kept before the first notebook runs."""
import json
import re

import pytest

from dwf_lab.core.config import get_profile
from dwf_lab.course import cost, runner
from dwf_lab.course.banner import notebook_banner
from dwf_lab.course.forecast import NotebookForecast, course_forecast, forecast_line
from dwf_lab.course.plan import NOTEBOOK_PLANS
from dwf_lab.pipeline.reproduce import train_run
from dwf_lab.store.runs import Run
from dwf_lab.training.builders import load_data
from dwf_lab.training.stages import plan_stages

PROBE = {"fp32": 100.0, "train": 100.0, "batch": 32, "seconds": 0.1}


@pytest.fixture
def smoke(monkeypatch, tmp_path):
    monkeypatch.setenv("DWF_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(cost, "_probe", lambda *a: dict(PROBE))    # the same rate every time it is asked
    p = get_profile("smoke")
    return p, Run("forecast", p), load_data(p)


def test_each_stage_is_priced_once_by_the_first_notebook_that_trains_it(smoke):
    p, run, data = smoke
    f = {x.notebook: x for x in course_forecast(p, data, run)}
    assert list(f) == list(NOTEBOOK_PLANS)
    # on a fresh run the first notebook's forecast is its banner's estimate
    assert f["01"].seconds == pytest.approx(notebook_banner("01", p, run, data).total_s)
    # 04 trains only the mixture: 01-03 trained the experts it loads
    mixture = next(s for s in plan_stages(p) if s.kind == "mixture")
    b04 = notebook_banner("04", p, run, data)
    assert f["04"].seconds == pytest.approx(next(c.seconds for c in b04.costs if c.step.name == mixture.name))
    assert f["04"].seconds < b04.total_s
    # every notebook that only reads is free, and nothing is trained or written by a forecast
    assert f["08"].seconds == 0 and f["08"].steps == 0
    assert not any(run.is_done(s, st.name) for s in p.seeds for st in plan_stages(p))
    assert not (run.root / "course_times.json").exists()


def test_a_stage_the_run_has_is_not_priced(smoke):
    p, run, data = smoke
    before = {x.notebook: x.seconds for x in course_forecast(p, data, run)}
    train_run(run, p.seeds[0], data, "benign", progress=False)
    after = {x.notebook: x.seconds for x in course_forecast(p, data, run)}
    assert before["01"] > 0 and after["01"] == 0


def test_the_line_names_the_total_and_the_heaviest_notebooks_and_advises_a_slow_machine():
    laptop, smoke = get_profile("laptop"), get_profile("smoke")
    slow = [NotebookForecast("01", 1200.0, 1), NotebookForecast("05", 6000.0, 9), NotebookForecast("06", 3600.0, 4),
            NotebookForecast("08", 0.0, 0)]
    line = forecast_line(slow, laptop)
    assert line.startswith("the run's own work in this course: about 3 h 00 min on this machine")
    assert "most in 05 (1 h 40 min), 06 (1 h 00 min), 01 (20 min)" in line
    assert "sized for about an hour" in line and "--profile smoke" in line
    assert "sized for" not in forecast_line(slow, smoke)                  # the advice is about the laptop profile
    assert "sized for" not in forecast_line(slow[:1], laptop)             # 20 minutes: nothing to advise
    assert forecast_line([NotebookForecast("01", 0.0, 0)], laptop).startswith("the run already has everything")


def test_the_runner_says_it_first_and_keeps_it_beside_the_times(smoke, monkeypatch):
    p, run, data = smoke
    said = []
    monkeypatch.setattr(runner.pm, "execute_notebook", lambda src, out, **k: open(out, "w").write(open(src).read()))
    runner.run_course(p, run_name="forecast", notebooks=["01", "02"], log=said.append, site=False)
    assert said[1].startswith("[dwf-lab course] the run's own work in this course: about ")
    assert re.search(r"; most in 0[12] \(.+\), 0[12] \(", said[1]), said[1]   # both priced, the heavier first
    times = json.loads((run.root / "course_times.json").read_text())
    assert set(times["forecast"]["notebooks"]) == {"01", "02"} and set(times["notebooks"]) == {"01", "02"}
    assert times["forecast"]["notebooks"]["01"] == pytest.approx(notebook_banner("01", p, run, data).total_s, abs=0.1)


def test_a_forecast_that_fails_is_one_line_and_the_course_goes_on(smoke, monkeypatch):
    p, run, _ = smoke
    said = []
    monkeypatch.setattr(runner, "course_forecast", lambda *a, **k: (_ for _ in ()).throw(KeyError("x")))
    monkeypatch.setattr(runner.pm, "execute_notebook", lambda src, out, **k: open(out, "w").write(open(src).read()))
    done = runner.run_course(p, run_name="forecast", notebooks=["01"], log=said.append, site=False)
    assert len(done) == 1 and said[1] == "[dwf-lab course] no forecast of the course's length (KeyError: 'x')"
