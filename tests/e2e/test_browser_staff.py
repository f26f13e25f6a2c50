"""An instructor in headless Chromium: assign a lab, import a roster (previewing the file before
anything changes), give the course grace days, grant an extension and export the gradebook from the
staff pages; then a student sees their own due time, grace days and quota, with their local time beside the course's."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connections

from portal.courses.models import Assignment, Enrollment
from portal.submissions.models import Job, Submission
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

ROSTER = (
    "username;email;first_name;last_name;role;section\n"
    "ada;ada@uni.edu;Ada;Lovelace;student;A\n"
    "eve;eve@uni.edu;Eve;;hacker;A\n"
)


def test_an_instructor_runs_the_course_and_a_student_sees_their_standing(
    live_server, cast, custom_op, browser, tmp_path, mailoutbox, monkeypatch
):
    # Playwright's sync API runs an event loop in this thread; the ORM checks below are plain reads.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    base, course = live_server.url, cast["course"]
    page = browser.new_context().new_page()
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", "ines")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")

    page.goto(f"{base}/courses/{course.slug}/")
    page.click("text=Assignments")
    page.select_option("select[name=lab]", value=str(custom_op.lab.pk))
    page.fill("input[name=slug]", "hw2")
    page.fill("input[name=opens_at]", "2026-01-05T09:00")
    page.fill("input[name=due_at]", "2026-01-19T23:59")
    page.click("#assign button[type=submit]")
    page.wait_for_selector("text=is assigned, due 2026-01-19 23:59")
    assert Assignment.objects.filter(course=course, slug="hw2").exists()

    page.goto(f"{base}/courses/{course.slug}/")
    page.click("text=Roster")
    csv = tmp_path / "roster.csv"
    csv.write_text(ROSTER)
    page.set_input_files("input[name=file]", str(csv))
    page.click("button[value=preview]")
    page.wait_for_selector("#roster-summary")
    assert page.locator("#roster-summary").text_content() == "created 1, updated 0, unchanged 0, refused 1"
    refused = page.locator("#roster-preview tr.roster-refused td").nth(3).text_content()
    assert refused == "unknown role 'hacker': use one of instructor, student, ta"
    page.screenshot(path=str(tmp_path / "roster-preview.png"), full_page=True)
    assert not Enrollment.objects.filter(course=course, user__username="ada").exists()

    page.click("button[value=apply]")
    page.wait_for_selector("text=Roster imported: created 1, updated 0, unchanged 0, refused 1.")
    assert page.locator("#roster-people", has_text="Lovelace").count() == 1
    assert Enrollment.objects.get(course=course, user__username="ada").section == "A"
    assert [m.to for m in mailoutbox] == [["ada@uni.edu"]]

    page.goto(f"{base}/courses/{course.slug}/")
    page.click("text=Settings")
    page.fill("input[name=grace_days]", "2")
    page.click("#course-settings button[type=submit]")
    page.wait_for_selector("text=Course settings saved.")
    Assignment.objects.filter(pk=custom_op.pk).update(max_submissions=3)
    page.goto(f"{base}/courses/{course.slug}/")
    page.click("text=Extensions")
    page.select_option("select[name=assignment]", value=custom_op.slug)
    page.fill("input[name=students]", "alice")
    page.fill("input[name=due_at]", f"{custom_op.due_at.year + 1}-01-10T12:00")
    page.fill("input[name=reason]", "medical note")
    page.click("#grant button[type=submit]")
    page.wait_for_selector("text=for 1 (alice)")
    assert page.locator("#extensions td", has_text="medical note").count() == 1
    page.screenshot(path=str(tmp_path / "extensions.png"), full_page=True)

    graded = Submission.objects.create(assignment=custom_op, student=cast["bob"])
    Job.objects.create(
        submission=graded, seed=1, lab_version=1, state="succeeded", score=75.0, finished_at=graded.created_at
    )
    page.goto(f"{base}/courses/{course.slug}/")
    page.click("text=Gradebook")
    assert page.locator("#gradebook tr[data-student]").count() == 4  # alice, bob, carol and ada
    with page.expect_download() as download:
        page.click("#export")
    exported = Path(download.value.path()).read_text().splitlines()
    assert download.value.suggested_filename == f"{course.slug}-grades.csv"
    assert exported == [
        "username,email,section,hw2,custom-op",  # by due time; empty: no graded submission
        "ada,ada@uni.edu,A,,",
        "alice,alice@example.edu,,,",
        "bob,bob@example.edu,,,75",
        "carol,carol@example.edu,,,",
    ]

    student = browser.new_context(timezone_id="Asia/Tokyo").new_page()  # the course's zone is UTC
    student.goto(f"{base}/accounts/login/")
    student.fill("input[name=username]", "alice")
    student.fill("input[name=password]", PASSWORD)
    student.click("button[type=submit]")
    student.wait_for_url(f"{base}/")
    student.goto(f"{base}/courses/{course.slug}/{custom_op.slug}/")
    due = student.locator("#my-due").text_content()
    assert f"{custom_op.due_at.year + 1}-01-10 12:00 UTC (your time: " in due and "21:00" in due
    assert "extended" in due and "(medical note)" in due
    assert student.locator("#grace-days").text_content() == "2 of 2 left"
    assert student.locator("#quota").text_content() == "3 of 3 left"
    connections.close_all()  # the ORM made its own connection in Playwright's context: not left open
