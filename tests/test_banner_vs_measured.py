"""benchmarks/banner_vs_measured.py reads each executed notebook's cost banner (as the banner
itself writes it) and sets it against the notebook's measured time in course_times.json."""
import importlib.util
import json
from pathlib import Path

import pytest

from dwf_lab.course.banner import Banner

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "banner_vs_measured.py"


@pytest.fixture(scope="module")
def bvm():
    spec = importlib.util.spec_from_file_location("banner_vs_measured", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _banner(nb: str, seconds: float | None) -> str:
    todo = [("train", "benign", seconds, "")] if seconds is not None else []
    return Banner(nb, "t", [], todo, [], seconds or 0.0, [], own="" if todo else "trains a quick classifier").text()


def _run(tmp_path, notebooks: dict[str, tuple[float | None, float]]) -> Path:
    run = tmp_path / "run"
    (run / "notebooks").mkdir(parents=True)
    times = {}
    for key, (estimate, measured) in notebooks.items():
        name = f"{key}_lesson.ipynb"
        cells = [{"cell_type": "code", "source": "x", "outputs": [
            {"output_type": "stream", "name": "stdout", "text": "Notebook 99: not a banner output\n"}]},
            {"cell_type": "code", "source": "setup", "outputs": [
                {"output_type": "display_data", "metadata": {},
                 "data": {"text/plain": _banner(key, estimate).splitlines(keepends=True)}}]}]
        (run / "notebooks" / name).write_text(json.dumps({"cells": cells}))
        times[key] = {"notebook": name, "seconds": measured}
    (run / "course_times.json").write_text(json.dumps({"notebooks": times,
                                                       "forecast": {"notebooks": {"01": 500.0}}}))
    return run


def test_each_banner_is_read_back_as_the_range_its_rounding_covers(bvm, tmp_path):
    run = _run(tmp_path, {"00": (None, 80.0), "01": (420.0, 462.0), "02": (45.0, 50.0), "03": (3900.0, 3600.0)})
    rows = {r["notebook"]: r for r in bvm.compare(run)}
    assert rows["00"]["estimate_low_s"] is None and rows["00"]["measured_over_estimate"] is None
    assert (rows["01"]["estimate_low_s"], rows["01"]["estimate_high_s"]) == (390.0, 450.0)   # "about 7 min"
    assert rows["01"]["measured_over_estimate"] == 1.1 and rows["01"]["forecast_s"] == 500.0
    assert rows["02"]["forecast_s"] is None
    assert (rows["02"]["estimate_low_s"], rows["02"]["estimate_high_s"]) == (44.5, 45.5)     # "about 45 s"
    assert (rows["03"]["estimate_low_s"], rows["03"]["estimate_high_s"]) == (3870.0, 3930.0)  # "about 1 h 05 min"


def test_the_table_sums_only_the_priced_notebooks_and_a_run_without_times_is_one_line(bvm, tmp_path, capsys):
    run = _run(tmp_path, {"00": (None, 60.0), "01": (600.0, 540.0)})
    assert bvm.main([str(run)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("all 2 notebooks: 10.0 min measured; the 1 with a priced banner: 9.0 min measured "
                           "against 9.5-10.5 min")
    assert bvm.main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
