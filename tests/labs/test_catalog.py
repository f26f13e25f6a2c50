"""The lab catalog: loading and validating lab folders, and syncing them into the database."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from gpu_runner.selfcheck import SolutionReport, visibility_problems
from labs.catalog import LabError, discover_labs, find_lab, load_lab
from portal.catalog.models import Lab, LabVersion
from portal.catalog.services import lab_sync_all
from tests.conftest import FIXTURE_LABS

CATALOG = {
    "vector_add": "vector_add.py",
    "custom_op": "linear_op.py",
    "autodiff": "autodiff.py",
    "cuda_matmul": "matmul_ext.py",
    "triton_softmax": "softmax.py",
    "ring_allreduce": "collectives.py",
    "grad_compression": "compression.py",
    "quantization": "quantize.py",
    "nas_search": "search.py",
    "data_pipeline_parallel": "parallel.py",
}


def test_custom_op_lab_loads_with_its_contract():
    lab = find_lab("custom_op")
    assert lab.entry == "linear_op.py" and lab.allowed_files == ("linear_op.py",)
    assert lab.resource_class == "cpu" and lab.metric.direction == "lower"
    assert "torch.nn.functional.linear" in lab.forbidden
    names = [s.name for s in lab.solutions()]
    assert names[:2] == ["starter", "correct"]
    assert {"calls_f_linear", "wrong_bias_grad", "ignores_needs_input_grad", "crashes"} <= set(names)
    assert "class MyLinearFunction" in lab.starter_files()["linear_op.py"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('slug = "echo_lab"', 'slug = "other"'), "must be lower_snake_case and equal the folder"),
        (lambda t: t.replace('entry = "sol.py"', 'entry = "missing.py"'), "entry 'missing.py' must be one of"),
        (lambda t: t.replace("wall_seconds = 8", "wall_second = 8"), "unknown [limits] keys ['wall_second']"),
        (lambda t: t.replace('direction = "lower"', 'direction = "down"'), "direction must be 'lower' or 'higher'"),
        (lambda t: t + "\nversion = [", "invalid TOML"),
    ],
)
def test_malformed_lab_toml_is_refused_with_what_to_fix(tmp_path, edit, message):
    folder = tmp_path / "echo_lab"
    shutil.copytree(FIXTURE_LABS / "echo_lab", folder)
    (folder / "lab.toml").write_text(edit((folder / "lab.toml").read_text()))
    with pytest.raises(LabError) as caught:
        load_lab(folder)
    assert message in str(caught.value)


def test_unknown_lab_names_the_known_ones():
    with pytest.raises(LabError, match="no lab 'nope'.*known: .*custom_op, data_pipeline_parallel"):
        find_lab("nope")


def test_sync_is_idempotent_and_tracks_versions(db, tmp_path):
    root = tmp_path / "labs"
    shutil.copytree(FIXTURE_LABS / "echo_lab", root / "echo_lab")
    first = lab_sync_all(root=root)
    assert first.created == ["echo_lab"]
    assert lab_sync_all(root=root).unchanged == ["echo_lab"]
    lab = Lab.objects.get(slug="echo_lab")
    assert lab.version == 1 and lab.allowed_files == ["sol.py", "helper.py"] and "double" in lab.starter_files["sol.py"]

    grader = root / "echo_lab" / "grader.py"
    grader.write_text(grader.read_text() + "\n# changed\n")
    changed = lab_sync_all(root=root)
    assert changed.updated == ["echo_lab"] and "bump 'version'" in changed.warnings[0]

    toml = root / "echo_lab" / "lab.toml"
    toml.write_text(toml.read_text().replace("version = 1", "version = 2"))
    assert lab_sync_all(root=root).updated == ["echo_lab"]
    assert Lab.objects.get(slug="echo_lab").version == 2
    assert sorted(LabVersion.objects.values_list("version", flat=True)) == [1, 1, 2]

    shutil.rmtree(root / "echo_lab")
    assert lab_sync_all(root=root).retired == ["echo_lab"]
    assert not Lab.objects.get(slug="echo_lab").is_available


def test_every_lab_of_the_catalog_ships_and_loads():
    """The ten labs of ../shared/LABS.md, by the names students code against."""
    labs = {lab.slug: lab for lab in discover_labs()}
    assert sorted(labs) == sorted(CATALOG)
    for slug, entry in CATALOG.items():
        assert labs[slug].entry == entry and labs[slug].metric is not None, slug
        assert labs[slug].starter_files()[entry], slug
    assert {slug for slug, lab in labs.items() if lab.world_size > 1} == {
        "ring_allreduce",
        "grad_compression",
        "data_pipeline_parallel",
    }
    assert {slug for slug, lab in labs.items() if lab.is_gpu} == {"vector_add", "cuda_matmul", "triton_softmax"}


def test_expected_toml_is_validated(tmp_path):
    folder = tmp_path / "echo_lab"
    shutil.copytree(FIXTURE_LABS / "echo_lab", folder)
    wrong = folder / "solutions" / "wrong" / "typo"
    wrong.mkdir(parents=True)
    (wrong / "sol.py").write_text("def double(x):\n    return x\n")
    (wrong / "expected.toml").write_text('verdict = "failed"\nmesages = ["x"]\n')
    with pytest.raises(LabError, match=r"unknown keys \['mesages'\]"):
        load_lab(folder).solutions()
    (wrong / "expected.toml").write_text('verdict = "fail"\n')
    with pytest.raises(LabError, match="verdict 'fail' must be one of"):
        load_lab(folder).solutions()
    (wrong / "expected.toml").write_text(
        'verdict = "timed_out"\nreason = "time_limit"\nscore = 0\n[limits]\nwall_seconds = 5\n'
    )
    solution = next(s for s in load_lab(folder).solutions() if s.name == "typo")
    assert (solution.expected_verdict, solution.expected_reason, solution.expected_score) == (
        "timed_out",
        "time_limit",
        0,
    )
    assert solution.limits == {"wall_seconds": 5}


def test_lab_check_names_a_visibility_pattern_that_matches_no_test():
    lab = find_lab("quantization")
    correct = next(s for s in lab.solutions() if s.kind == "correct")
    graded = SolutionReport(correct, {"tests": [{"name": "quantize_clamp"}, {"name": "prune_mask_kept"}]}, 1.0)
    assert visibility_problems(lab, [graded]) == []
    typo = dataclasses.replace(lab, test_visibility=(("quantize_clmp", "hidden"), ("prune_*", "after_due")))
    assert visibility_problems(typo, [graded]) == [
        "[visibility] 'quantize_clmp' matches none of the lab's tests (prune_mask_kept, quantize_clamp)"
    ]
    assert visibility_problems(typo, []) == []  # nothing graded: nothing to compare with
