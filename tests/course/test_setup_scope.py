"""The course scope: core by default, full on request, a typo refused with the choices."""
import pytest

from dwf_lab.course.setup import SCOPE_ENV, course_scope


def test_scope_defaults_to_core_and_reads_the_environment(monkeypatch):
    monkeypatch.delenv(SCOPE_ENV, raising=False)
    assert course_scope() == "core"
    monkeypatch.setenv(SCOPE_ENV, "full")
    assert course_scope() == "full"
    assert course_scope("core") == "core"   # an explicit parameter wins over the environment


def test_unknown_scope_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(SCOPE_ENV, "everything")
    with pytest.raises(ValueError, match=r"core, full.*DWF_COURSE_SCOPE"):
        course_scope()


# ------------------------------------------------------------- threads --
def _fake_proc_stat(monkeypatch, samples):
    """/proc/stat's first line, one sample per read: (user, idle) jiffies."""
    import io

    from dwf_lab.course import setup
    it = iter(samples)

    def fake_open(path, *a, **k):
        assert path == "/proc/stat"
        user, idle = next(it)
        return io.StringIO(f"cpu  {user} 0 0 {idle} 0 0 0 0 0 0\n")
    monkeypatch.setattr(setup, "open", fake_open, raising=False)
    monkeypatch.setattr(setup.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(setup.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(setup.time, "sleep", lambda s: None)


def test_threads_follow_the_cores_busy_now_not_the_load_average_of_work_that_finished(monkeypatch):
    import torch

    from dwf_lab.core.config import get_profile
    from dwf_lab.course import setup
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(setup.os, "getloadavg", lambda: (1.0, 1.0, 1.0))   # the last notebook's kernel
    try:
        _fake_proc_stat(monkeypatch, [(100, 800), (102, 898)])   # 2% busy over the window: idle now
        assert setup.busy_cores() == pytest.approx(2 * 0.02)
        _fake_proc_stat(monkeypatch, [(100, 800), (102, 898)])
        assert setup.configure_threads(get_profile("laptop")) == 2 == torch.get_num_threads()
        _fake_proc_stat(monkeypatch, [(100, 800), (180, 820)])   # 80% of both cores busy: one left
        assert setup.configure_threads(get_profile("laptop")) == 1
        assert setup.configure_threads(get_profile("laptop", num_threads=2)) == 2   # the profile decides
    finally:
        torch.set_num_threads(before)


def test_scope_goes_only_to_the_notebooks_that_declare_it():
    """papermill warns about an undeclared parameter: the course passes ``scope`` where it is read."""
    from dwf_lab.course.runner import NOTEBOOKS_DIR, _declared

    params = {"profile": "smoke", "run_name": "x", "overrides": {}, "scope": "core"}
    assert _declared(NOTEBOOKS_DIR / "06_adaptive_attacks.ipynb", params) == params
    assert _declared(NOTEBOOKS_DIR / "07_ablations.ipynb", params) == params
    assert _declared(NOTEBOOKS_DIR / "00_threat_models.ipynb", params) == {k: v for k, v in params.items()
                                                                          if k != "scope"}
