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
