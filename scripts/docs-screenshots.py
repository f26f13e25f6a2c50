#!/usr/bin/env python
"""Take the screenshots of docs/course-admin.md again: the demo course (``manage.py demo``) on a live
server, with a class of graded submissions to chart, in headless Chromium; PNGs into docs/img/.

Everything happens in a throwaway place of its own, never in your development data: a database it
creates and drops (PostgreSQL ``test_aisys_docs_screenshots`` when DATABASE_URL names a PostgreSQL
server, else an SQLite file), a var/ folder in /tmp (so the demo's logins do not replace yours), and
an unreachable broker (the demo's submissions stay queued; nothing is graded, the graded jobs are
written directly). It is not a test and no test runs it:

    .venv/bin/python scripts/docs-screenshots.py            # needs Chromium (apt-get install chromium)
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"
VIEWPORT = {"width": 1280, "height": 800}
MAX_BYTES = 200 * 1024

WORK = Path(tempfile.mkdtemp(prefix="aisys-docs-screenshots-"))
os.environ["AISYS_VAR_DIR"] = str(WORK)
os.environ["AISYS_UPLOADED_LABS"] = str(WORK / "uploaded-labs")
os.environ["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens: jobs stay queued, no worker of yours grades them
os.environ["DJANGO_SETTINGS_MODULE"] = "portal.test_settings"
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # the ORM and Playwright's sync API share this thread
sys.path.insert(0, str(ROOT))

import django  # noqa: E402

django.setup()

from django.contrib.staticfiles.handlers import StaticFilesHandler  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connections  # noqa: E402
from django.test.testcases import LiveServerThread  # noqa: E402
from django.test.utils import setup_databases, setup_test_environment, teardown_databases  # noqa: E402
from django.utils import timezone  # noqa: E402

ROSTER = (
    "username,email,first_name,last_name,role,section\n"
    "ada,ada@uni.edu,Ada,Lovelace,student,A\n"
    "alan,alan@uni.edu,Alan,Turing,ta,B\n"
    "bob,bob@example.edu,,,student,B\n"
    "eve,eve@uni.edu,Eve,,hacker,A\n"
)
TESTS = [  # (name, how often a student's counted submission fails it)
    ("forward_matches_torch", 0.1),
    ("backward_grad_input", 0.35),
    ("backward_grad_weight", 0.5),
    ("no_bias", 0.2),
    ("odd_shapes_781x3", 0.6),
    ("float64_gradcheck", 0.3),
    ("module_parameters", 0.05),
]


def seed_class(course, rng: random.Random) -> None:
    """Twenty more students in sections A and B, each with one to four graded submissions to
    custom_op, due in two hours, made over the last two days (most of them in the last hours)."""
    from django.contrib.auth.models import User

    from portal.courses.services import enrollment_create
    from portal.submissions.models import Job, Submission

    now = timezone.now()
    assignment = course.assignments.get(lab__slug="custom_op")
    assignment.opens_at, assignment.due_at = now - timedelta(days=7), now + timedelta(hours=2)
    assignment.save(update_fields=["opens_at", "due_at"])
    for i in range(20):
        student = User.objects.create_user(f"student{i:02}", f"student{i:02}@example.edu")
        enrollment_create(course=course, user=student, role="student")
        course.enrollments.filter(user=student).update(section="AB"[i % 2])
        skill = rng.random()
        for _ in range(rng.randint(1, 4)):
            hours_before_now = min(rng.expovariate(1 / 8), 46)
            tests = []
            for name, hardness in TESTS:
                ok = rng.random() > hardness * (1.2 - skill)
                tests.append({"name": name, "points": 1.0, "outcome": "passed" if ok else "failed", "message": ""})
            score = round(100 * sum(t["outcome"] == "passed" for t in tests) / len(tests), 1)
            metric = round(rng.lognormvariate(0.2, 0.25), 3) if score == 100 else None
            submission = Submission.objects.create(assignment=assignment, student=student)
            at = now - timedelta(hours=hours_before_now)
            Submission.objects.filter(pk=submission.pk).update(created_at=at)
            Job.objects.create(
                submission=submission,
                seed=1,
                lab_version=assignment.lab.version,
                state="succeeded" if score == 100 else "failed",
                score=score,
                metric=metric,
                result={"verdict": "passed" if score == 100 else "failed", "score": score, "tests": tests},
                finished_at=at,
            )


def shoot(base: str, logins: dict[str, str], course_slug: str) -> list[Path]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs headless Chromium: apt-get install chromium")
    OUT.mkdir(parents=True, exist_ok=True)
    taken = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])

        def signed_in(username: str):
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.goto(f"{base}/accounts/login/")
            page.fill("input[name=username]", username)
            page.fill("input[name=password]", logins[username])
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/")
            return page

        def save(page, name: str, *, full_page: bool = False) -> None:
            path = OUT / f"{name}.png"
            page.screenshot(path=str(path), full_page=full_page)
            taken.append(path)

        course = f"{base}/courses/{course_slug}"
        page = signed_in("instructor")
        page.goto(f"{course}/staff/assignments/")
        save(page, "staff-assignments")
        page.goto(f"{course}/staff/roster/")
        roster = WORK / "roster.csv"
        roster.write_text(ROSTER)
        page.set_input_files("input[name=file]", str(roster))
        page.click("button[value=preview]")
        page.wait_for_selector("#roster-summary")
        save(page, "roster-preview")
        page.goto(f"{course}/staff/extensions/")
        save(page, "extensions")
        page.goto(f"{course}/staff/gradebook/")
        save(page, "gradebook")
        page.goto(f"{course}/staff/assignments/custom-op/analytics/")
        page.wait_for_function("() => [...document.querySelectorAll('canvas')].every((c) => Chart.getChart(c))")
        save(page, "analytics", full_page=True)
        student = signed_in("alice")
        student.goto(f"{course}/custom-op/")
        save(student, "student-assignment")
        browser.close()
    return taken


def main() -> None:
    db = connections.settings["default"]  # the settings the connection is made from, defaults filled in
    postgres = db["ENGINE"].endswith("postgresql")
    db["TEST"]["NAME"] = "test_aisys_docs_screenshots" if postgres else str(WORK / "db.sqlite3")
    setup_test_environment()
    old = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    server = None
    try:
        call_command("demo", stdout=open(os.devnull, "w"))
        logins = dict(line.split(" ", 1) for line in (WORK / "demo-logins.txt").read_text().splitlines())
        from portal.courses.management.commands.demo import DEMO_COURSE
        from portal.courses.models import Course

        course = Course.objects.get(slug=DEMO_COURSE)
        seed_class(course, random.Random(12))
        seed_user_submission(course, "alice")  # her page shows her grade
        connections.close_all()
        server = LiveServerThread("127.0.0.1", StaticFilesHandler, port=0)
        server.daemon = True
        server.start()
        server.is_ready.wait()
        if server.error:
            raise server.error
        for path in shoot(f"http://127.0.0.1:{server.port}", logins, course.slug):
            size = path.stat().st_size
            print(f"{path.relative_to(ROOT)}: {size // 1024} KB{'  (over 200 KB!)' if size > MAX_BYTES else ''}")
    finally:
        if server is not None:
            server.terminate()
        connections.close_all()
        teardown_databases(old, verbosity=0)
        shutil.rmtree(WORK, ignore_errors=True)


def seed_user_submission(course, username: str) -> None:
    from django.contrib.auth.models import User

    from portal.submissions.models import Job, Submission

    assignment = course.assignments.get(lab__slug="custom_op")
    submission = Submission.objects.create(assignment=assignment, student=User.objects.get(username=username))
    Submission.objects.filter(pk=submission.pk).update(created_at=timezone.now() - timedelta(hours=3))
    tests = [{"name": name, "points": 1.0, "outcome": "passed", "message": ""} for name, _ in TESTS]
    Job.objects.create(
        submission=submission,
        seed=1,
        lab_version=assignment.lab.version,
        state="succeeded",
        score=100.0,
        metric=1.18,
        result={"verdict": "passed", "score": 100.0, "tests": tests},
        finished_at=timezone.now() - timedelta(hours=3),
    )


if __name__ == "__main__":
    main()
