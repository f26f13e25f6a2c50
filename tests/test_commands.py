"""The management commands instructors run: grade, lab check, lab new, sync_labs and demo."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.utils import timezone

from labs.catalog import LABS_ROOT, discover_labs
from portal.courses.models import Assignment, Course, Enrollment
from portal.submissions.models import Job

SOLUTIONS = LABS_ROOT / "custom_op" / "solutions"


def _manage(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], capture_output=True, text=True, cwd=LABS_ROOT.parent, timeout=timeout
    )


def grade(*args: str) -> subprocess.CompletedProcess:
    return _manage("grade", *args, timeout=120)


@pytest.mark.slow
def test_grade_json_reports_verdict_score_metric_and_tests():
    done = grade("custom_op", str(SOLUTIONS / "correct" / "linear_op.py"), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["verdict"] == "succeeded" and result["score"] == 100.0 and result["metric"] > 0
    assert len(result["tests"]) == 9 and {t["outcome"] for t in result["tests"]} == {"passed"}
    assert "[PASS] mlp_digits" in done.stderr  # live progress goes to stderr


@pytest.mark.slow
def test_grade_exit_status_and_message_for_a_wrong_solution():
    done = grade("custom_op", str(SOLUTIONS / "wrong" / "wrong_bias_grad" / "linear_op.py"))
    assert done.returncode == 1
    assert "failed: score" in done.stdout and "grad of bias" in done.stderr


def test_grade_refuses_a_file_the_lab_does_not_accept(tmp_path):
    stray = tmp_path / "other.py"
    stray.write_text("x = 1\n")
    done = grade("custom_op", str(stray))
    assert done.returncode != 0 and "this lab accepts only linear_op.py" in done.stderr


def test_demo_creates_the_course_users_and_every_lab_and_is_idempotent(db, capsys, settings, tmp_path):
    settings.VAR_DIR = tmp_path
    call_command("demo")
    first = capsys.readouterr().out
    call_command("demo")
    second = capsys.readouterr().out
    course = Course.objects.get(slug="aisys-demo")
    every_lab = sorted(lab.slug for lab in discover_labs())
    assert "vector_add" in every_lab
    assert sorted(course.assignments.exclude(slug="autodiff-late").values_list("lab__slug", flat=True)) == every_lab
    roles = dict(Enrollment.objects.filter(course=course).values_list("user__username", "role"))
    assert roles == {"instructor": "instructor", "ta": "ta", "alice": "student", "bob": "student", "carol": "student"}
    # the course side at work: sections, grace days spent late, an extension
    late = course.assignments.get(slug="autodiff-late")
    assert (course.grace_days, late.late_policy) == (3, "grace")
    late_work = late.submissions.order_by("pk").values_list("student__username", "late_days", "disqualified_reason")
    assert list(late_work) == [("carol", 2, ""), ("alice", 2, "demo: identical to another student's submission")]
    assert list(late.extensions.values_list("student__username", "reason")) == [("bob", "demo: a medical note")]
    sections = dict(Enrollment.objects.filter(course=course, role="student").values_list("user__username", "section"))
    assert sections == {"alice": "A", "bob": "A", "carol": "B"}
    # a team assignment, and team Ada (set once: the second run changed nothing)
    assert list(course.assignments.filter(team_size__gt=1).values_list("slug", "team_size")) == [
        ("data-pipeline-parallel", 3)
    ]
    teams = [(t.name, sorted(t.members.values_list("user__username", flat=True))) for t in course.teams.all()]
    assert teams == [("Ada", ["alice", "bob"])]
    assert course.audit.filter(action="teams").count() == 1
    password = next(line for line in first.splitlines() if " alice " in line).split("password: ")[1].strip()
    assert User.objects.get(username="alice").check_password(password)
    assert password in second  # the same logins the second time
    assert f"alice {password}" in (tmp_path / "demo-logins.txt").read_text()
    # An admin login too, which opens Django admin (none of the course's logins can).
    admin_password = next(line for line in first.splitlines() if " admin " in line).split("password: ")[1].strip()
    assert admin_password in second
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff and admin.check_password(admin_password)


def test_lab_new_scaffolds_a_lab_that_passes_lab_check(tmp_path):
    created = _manage("lab", "new", "demo_relu", "--root", str(tmp_path))
    assert created.returncode == 0, created.stderr
    folder = tmp_path / "demo_relu"
    assert (folder / "starter" / "demo_relu.py").exists() and len(list((folder / "solutions" / "wrong").iterdir())) == 5
    assert (folder / "run.py").exists() and (folder / "reference.py").exists()  # lab contract v2
    again = _manage("lab", "new", "demo_relu", "--root", str(tmp_path))
    assert again.returncode != 0 and "already exists" in again.stderr

    checked = _manage("lab", "check", str(folder))
    assert checked.returncode == 0, checked.stderr
    for name in ("starter", "correct", "calls_torch_relu", "leaky", "crashes", "hangs", "skips_timed_work"):
        assert re.search(rf"ok\s+{name}\s", checked.stderr), checked.stderr
    assert "all checks passed" in checked.stderr


def test_lab_check_fails_when_a_solution_misses_the_outcome_it_promises(tmp_path):
    assert _manage("lab", "new", "demo_relu", "--root", str(tmp_path)).returncode == 0
    expected = tmp_path / "demo_relu" / "solutions" / "wrong" / "leaky" / "expected.toml"
    expected.write_text('verdict = "failed"\nmessages = ["negative inputs must give 0"]\n')
    checked = _manage("lab", "check", str(tmp_path / "demo_relu"), "--only", "leaky")
    assert checked.returncode == 1
    assert "FAIL leaky" in checked.stderr and "message 'negative inputs must give 0' not shown" in checked.stderr


def test_demo_rejudges_the_late_work_once_it_is_graded_and_only_once(db, capsys, settings, tmp_path):
    settings.VAR_DIR = tmp_path
    call_command("demo")
    capsys.readouterr()
    call_command("demo", "--rejudge", "--wait", "0")
    assert capsys.readouterr().out.strip() == (
        "autodiff-late is not graded yet (is a grading worker running?); no rejudge"
    )
    late = Assignment.objects.get(course__slug="aisys-demo", slug="autodiff-late")
    Job.objects.filter(submission__assignment=late).update(state="succeeded", score=100.0, finished_at=timezone.now())
    call_command("demo", "--rejudge", "--wait", "0")
    rejudge = late.rejudges.get()
    assert capsys.readouterr().out.strip() == f"rejudge #{rejudge.pk} of autodiff-late: 1 submission(s) queued"
    # carol's, the one that counts (alice's is disqualified), by the demo's instructor, after students' jobs
    [item] = rejudge.items.select_related("submission__student", "job")
    assert (item.submission.student.username, item.before_score, item.job.kind) == ("carol", 100.0, "rejudge")
    assert rejudge.requested_by.username == "instructor"
    call_command("demo", "--rejudge", "--wait", "0")
    assert capsys.readouterr().out.strip() == "autodiff-late was rejudged already"
