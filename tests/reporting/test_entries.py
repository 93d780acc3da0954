"""Shareable results: a RobustBench-style entry per evaluated model and a model card per trained
model, every number read from the stored results (never made up), what was not checked said."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import numpy as np
import pytest

from dwf_lab.core.config import get_profile
from dwf_lab.pipeline.reproduce import evaluate_run, train_run
from dwf_lab.pipeline.run_all import report_run
from dwf_lab.reporting.entries import TEST_SET_FILE, write_entries
from dwf_lab.reporting.model_cards import write_model_cards
from dwf_lab.reporting.noise import binomial_se
from dwf_lab.store.checkpoints import read_metadata
from dwf_lab.store.runs import Run
from dwf_lab.training.builders import load_data
from dwf_lab.training.stages import plan_stages

EVALUATED = ("benign", "mixture")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """A finished smoke run (every stage trained on 64 images, two evaluated) reported with its data."""
    p = get_profile("smoke", n_train=64)
    run = Run("smoke", p, root=tmp_path_factory.mktemp("runs") / "smoke")
    data = load_data(p)
    train_run(run, 0, data, progress=False)
    evaluate_run(run, 0, data, ",".join(EVALUATED), progress=False)
    written = report_run(run, data.name, data)
    return run, data, written


@pytest.fixture
def copy(smoke, tmp_path):
    """A private copy of the smoke run (a test may change its results)."""
    run, data, _ = smoke
    shutil.copytree(run.root, tmp_path / "copy")
    return Run("copy", run.profile, root=tmp_path / "copy"), data


def entry(run, model: str = "mixture") -> dict:
    return json.loads((run.report_dir / "entries" / f"{model}_seed0.json").read_text())


def record(run, model: str = "mixture") -> dict:
    return json.loads(run.eval_path(0, model).read_text())


def rewrite_record(run, model: str, change) -> None:
    rec = record(run, model)
    change(rec)
    run.eval_path(0, model).write_text(json.dumps(rec))


# ---------------------------------------------------------------- entries --
def test_every_evaluated_model_has_an_entry_in_robustbench_fields(smoke):
    run, data, written = smoke
    listed = json.loads(written["entries"].read_text())
    assert sorted(e["dwf_lab"]["model"] for e in listed) == sorted(EVALUATED)
    e = entry(run)
    assert e == next(x for x in listed if x["dwf_lab"]["model"] == "mixture")
    assert (e["dataset"], e["threat_model"], e["eps"], e["n_examples"]) == ("synthetic", "Linf", "8/255", 64)
    assert e["architecture"].startswith("DWF: soft-gated mixture of 3 ResNet-18 experts (width 0.0625")
    assert e["additional_data"] is False and e["number_forward_passes"] == 1


def test_the_numbers_are_the_stored_results_with_their_standard_errors(smoke):
    run, _, _ = smoke
    rec, e = record(run), entry(run)
    n, m = rec["n_test"], rec["metrics"]
    assert e["clean_acc"] == f"{m['SA']:.2f}"
    clean = e["dwf_lab"]["clean"]
    assert clean["correct"] == int(np.unpackbits(np.frombuffer(bytes.fromhex(rec["per_example"]["SA"]), np.uint8))[:n].sum())
    assert clean["se"] == pytest.approx(binomial_se(m["SA"], n), abs=1e-4) and clean["se"] > 0
    attacks = e["dwf_lab"]["attacks"]
    assert set(attacks) == set(m) - {"SA", "worst-case"}
    for key, v in attacks.items():
        assert v["acc"] == pytest.approx(m[key]) and v["n"] == n
        assert v["in_threat_model"] is (key != "fgsm:0.09"), key      # 0.09 > 8/255
    wc = e["dwf_lab"]["worst_case"]
    assert wc["key"] == "worst-case" and wc["acc"] == pytest.approx(m["worst-case"]) and "fgsm:0.09" not in wc["over"]


def test_the_entry_names_the_checkpoint_the_test_images_the_versions_and_the_command(smoke):
    run, data, _ = smoke
    kit = entry(run)["dwf_lab"]
    path = run.model_path(0, "mixture")
    assert kit["checkpoint"]["path"] == "seed-0/models/mixture.safetensors"
    assert kit["checkpoint"]["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert kit["checkpoint"]["weights_sha256"] == read_metadata(path)["weights_sha256"]
    images = np.ascontiguousarray(data.x_test.numpy()).astype("<f4").tobytes()
    assert kit["test_set"]["test_images_sha256"] == hashlib.sha256(images).hexdigest()
    assert kit["test_set"]["test_labels_sha256"] == hashlib.sha256(data.y_test.numpy().astype("<i8").tobytes()).hexdigest()
    assert "bytes are hashed" in kit["test_set"]["hashed"]
    assert {"torch", "torchvision", "dwf_lab"} <= set(kit["versions"]["trained_with"])
    assert {"torch", "torchvision", "dwf_lab"} <= set(kit["versions"]["entry_written_with"])
    assert kit["command"] == "python -m dwf_lab run --profile smoke --run smoke --set n_train=64"


def test_a_later_report_without_the_data_keeps_the_test_images_hash(copy):
    run, data = copy
    before = entry(run)["dwf_lab"]["test_set"]["test_images_sha256"]
    write_entries(run)
    assert entry(run)["dwf_lab"]["test_set"]["test_images_sha256"] == before
    (run.report_dir / TEST_SET_FILE).unlink()
    write_entries(run)
    assert entry(run)["dwf_lab"]["test_set"]["test_images_sha256"] is None
    assert "not recorded" in entry(run)["dwf_lab"]["test_set"]["note"]


def test_other_test_images_on_this_machine_keep_the_stored_hash_with_a_warning(copy):
    run, data = copy
    before = entry(run)["dwf_lab"]["test_set"]["test_images_sha256"]
    other = dataclasses.replace(data, x_test=data.x_test.flip(-1))
    with pytest.warns(RuntimeWarning, match="are not the ones its results were reported with"):
        write_entries(run, other)
    assert entry(run)["dwf_lab"]["test_set"]["test_images_sha256"] == before


def test_autoattack_not_run_is_said_never_a_number(smoke):
    run, _, _ = smoke
    e = entry(run)
    assert e["autoattack_acc"] is None
    aa = e["dwf_lab"]["autoattack"]
    assert aa["run"] is False and "acc" not in aa
    assert "python -m dwf_lab adaptive --run smoke --stage mixture" in aa["note"]


OFFICIAL = {"suite": "pyautoattack (the original AutoAttack, Croce & Hein 2020)", "version": "standard",
            "standard": True, "pyautoattack": "0.2.0", "torch": "2.14.1", "attacks": ["apgd-ce", "apgd-t"]}


@pytest.mark.parametrize("settings, filled, label", [
    (OFFICIAL, True, "AutoAttack (official, standard)"),
    ({**OFFICIAL, "standard": False}, False, "reduced budget: NOT the standard suite"),
    (None, False, "the kit's own AutoAttack-style cascade"),
])
def test_autoattack_acc_is_the_official_standard_suite_only(copy, settings, filled, label):
    run, _ = copy
    stages = {"clean": 12.5, "after APGD-CE": 4.69, "after APGD-T": 3.12}

    def add(rec):
        rec["metrics"]["autoattack"] = 3.125
        rec["adaptive"] = {"settings": {"aa_version": "standard", "aa_iter": 5}}
        if settings is not None:     # the official suite: its own settings beside its result
            rec["attack_settings"] = {"autoattack": settings}
            rec["autoattack_stages"] = stages
        else:                        # an older record: the kit's cascade, stages under "adaptive"
            rec["adaptive"]["autoattack_stages"] = stages
    rewrite_record(run, "mixture", add)
    write_entries(run)
    e = entry(run)
    aa = e["dwf_lab"]["autoattack"]
    assert e["autoattack_acc"] == ("3.12" if filled else None)
    assert aa["run"] and aa["acc"] == 3.125 and aa["correct"] == 2 and label in aa["label"]
    assert aa["stages"] == stages
    if settings is not None:
        assert e["dwf_lab"]["attacks"]["autoattack"]["settings"] == settings
    if filled:
        assert e["dwf_lab"]["versions"]["attacked_with"] == {"pyautoattack": "0.2.0", "torch": "2.14.1"}
        assert e["dwf_lab"]["command"].endswith("--beyond")


def test_an_external_model_is_named_by_its_own_identity(copy):
    run, _ = copy

    def external(rec):
        rec["external"] = {"source": "checkpoint", "path": "/x/model.safetensors", "sha256": "ab" * 32}
        rec["stage_kind"] = "external"
    rewrite_record(run, "benign", external)
    (run.root / "model.json").write_text(json.dumps({"command": "python -m dwf_lab evaluate --checkpoint x"}))
    write_entries(run)
    e = entry(run, "benign")
    assert e["dwf_lab"]["checkpoint"]["file_sha256"] == "ab" * 32
    assert e["additional_data"] is None and e["number_forward_passes"] is None   # not known for a model from elsewhere
    assert e["dwf_lab"]["command"] == "python -m dwf_lab evaluate --checkpoint x"


def test_the_uniform_ensemble_is_named_by_its_experts_checkpoints(copy):
    run, _ = copy
    rec = record(run, "benign")
    rec.update(model="uniform-ensemble", row="Uniform ensemble", stage_kind="uniform_ensemble")
    run.eval_path(0, "uniform-ensemble").write_text(json.dumps(rec))
    write_entries(run)
    e = entry(run, "uniform-ensemble")
    experts = e["dwf_lab"]["checkpoint"]["experts"]
    assert [x["path"] for x in experts] == [f"seed-0/models/{s}.safetensors" for s in ("benign", "fgsm-1", "pgd-1")]
    assert experts[1]["file_sha256"] == hashlib.sha256(run.model_path(0, "fgsm-1").read_bytes()).hexdigest()
    assert e["architecture"] == "uniform average of 3 ResNet-18 experts (width 0.0625), no gate"


def test_the_entry_of_a_removed_result_is_removed(copy):
    run, _ = copy
    run.eval_path(0, "benign").unlink()
    listed = write_entries(run)["entries"]
    assert [e["dwf_lab"]["model"] for e in listed] == ["mixture"]
    assert sorted(p.name for p in (run.report_dir / "entries").iterdir()) == ["mixture_seed0.json"]


# ------------------------------------------------------------ model cards --
def test_a_card_per_trained_model_with_the_stored_numbers(smoke):
    run, _, written = smoke
    cards = {p.stem: p.read_text() for p in written["model_cards"].glob("*.md")}
    assert sorted(cards) == sorted(f"{s.name}_seed0" for s in plan_stages(run.profile))
    card, e = cards["mixture_seed0"], entry(run)
    clean = e["dwf_lab"]["clean"]
    assert f"| clean | {clean['acc']:.2f}% ± {clean['se']:.2f} ({clean['correct']}/64) |" in card
    assert "3 CIFAR ResNet-18 experts (benign, fgsm-1, pgd-1), width 0.0625, gate MLP hidden size 32" in card
    assert "learning rate 0.01 on a cosine schedule" in card and "1 of 1 planned epochs logged" in card
    assert "iterations from {1, 2}" in card      # the smoke profile's PGD choices, from config.json
    assert "synthetic, 64 training images" in card
    assert e["dwf_lab"]["checkpoint"]["file_sha256"] in card
    assert "Not evaluated" in cards["pgd-1_seed0"] and "not evaluated at all" in cards["pgd-1_seed0"]


def test_a_card_says_what_was_not_checked(smoke):
    run, _, written = smoke
    card = (written["model_cards"] / "mixture_seed0.md").read_text()
    flags = card.split("## What was not checked")[1]
    for said in ["AutoAttack not run", "only 64 test images", "GENERATED images", "no certified bound",
                 "gradient-masking checklist was not run", "one training seed"]:
        assert said in flags, said


def test_a_failed_checklist_item_is_on_the_card(copy):
    run, _ = copy
    items = [{"name": "Iterative attacks beat single-step attacks", "passed": False, "evidence": {},
              "explanation": "", "key": "iterative-vs-single-step"},
             {"name": "Input gradients are non-zero", "passed": True, "evidence": {}, "explanation": "", "key": "g"}]
    run.checklist_path(0, "mixture").write_text(json.dumps({"items": items, "n_examples": 32}))
    write_model_cards(run, write_entries(run)["entries"])
    card = (run.report_dir / "model_cards" / "mixture_seed0.md").read_text()
    assert "gradient-masking checklist FAILED: Iterative attacks beat single-step attacks" in card
    assert "Input gradients are non-zero" not in card and "checklist was not run" not in card
