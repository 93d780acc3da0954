"""A setting added to the profile later (ADDED_FIELDS) keeps older runs valid: their config.json
lacks it, holds its default by definition, and the digest leaves it out at that default."""
import json

import pytest

from dwf_lab.core.config import ADDED_FIELDS, get_profile, settings_digest
from dwf_lab.store.runs import Run, RunConfigMismatch, settings_checksum


def _as_older_kit_wrote_it(run: Run) -> None:
    cfg = json.loads(run.config_path.read_text())
    for k in ADDED_FIELDS:
        cfg["profile"].pop(k)
    cfg["digest"], cfg["checksum"] = settings_digest(cfg["profile"]), settings_checksum(cfg["profile"])
    run.config_path.write_text(json.dumps(cfg))


def test_a_run_stored_before_a_field_existed_still_opens(tmp_path):
    p = get_profile("smoke")
    _as_older_kit_wrote_it(Run("old", p, root=tmp_path / "old"))
    assert Run.open("old", p, root=tmp_path / "old").profile.benign_epochs is None


def test_the_added_field_set_to_another_value_is_another_run(tmp_path):
    _as_older_kit_wrote_it(Run("old", get_profile("smoke"), root=tmp_path / "old"))
    with pytest.raises(RunConfigMismatch, match="benign_epochs"):
        Run.open("old", get_profile("smoke", benign_epochs=3), root=tmp_path / "old")
