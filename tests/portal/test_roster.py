"""Roster import (portal/courses/roster.py) and ``manage.py roster import``."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from portal.courses.models import Enrollment
from portal.courses.roster import RosterError, import_roster, plan
from tests.factories import CourseFactory, UserFactory

pytestmark = pytest.mark.django_db

ROSTER = (
    "username,email,first_name,last_name,role,section\n"
    "ada,ada@uni.edu,Ada,Lovelace,student,A\n"
    "alan,alan@uni.edu,Alan,Turing,ta,A\n"
    "grace,grace@uni.edu,Grace,Hopper,instructor,\n"
)


def _actions(roster) -> list[tuple[int, str, str]]:
    return [(line.number, line.username, line.action) for line in roster.lines]


def test_a_roster_creates_accounts_and_enrollments_and_a_second_import_changes_nothing():
    course = CourseFactory()
    first = import_roster(course, ROSTER.encode())
    assert _actions(first) == [(2, "ada", "create"), (3, "alan", "create"), (4, "grace", "create")]
    assert first.summary() == "created 3, updated 0, unchanged 0, refused 0"
    ada = User.objects.get(username="ada")
    assert (ada.email, ada.first_name, ada.last_name, ada.has_usable_password()) == (
        "ada@uni.edu",
        "Ada",
        "Lovelace",
        False,
    )
    enrollments = {e.user.username: (e.role, e.section) for e in Enrollment.objects.filter(course=course)}
    assert enrollments == {"ada": ("student", "A"), "alan": ("ta", "A"), "grace": ("instructor", "")}

    again = import_roster(course, ROSTER.encode())
    assert again.summary() == "created 0, updated 0, unchanged 3, refused 0"
    assert User.objects.filter(username__in=["ada", "alan", "grace"]).count() == 3


def test_a_dry_run_says_what_would_change_and_writes_nothing():
    course = CourseFactory()
    import_roster(course, ROSTER.encode())
    changed = ROSTER.replace("ada@uni.edu,Ada,Lovelace,student,A", "ada@uni.edu,Ada,Lovelace,ta,B")
    changed += "new,new@uni.edu,,,student,B\n"
    dry = import_roster(course, changed.encode(), dry_run=True)
    ada = dry.lines[0]
    assert (ada.action, ada.changes) == ("update", ["role student -> ta", "section 'A' -> 'B'"])
    assert dry.summary() == "created 1, updated 1, unchanged 2, refused 0"
    assert not User.objects.filter(username="new").exists()
    assert Enrollment.objects.get(course=course, user__username="ada").role == "student"


def test_bad_lines_are_refused_with_their_reason_and_the_good_ones_still_apply():
    course = CourseFactory()
    UserFactory(username="taken", email="taken@uni.edu")
    UserFactory(username="root", email="root@uni.edu", is_superuser=True)
    data = (
        "username;email;first_name;last_name;role;section\n"  # ';' as a spreadsheet in many locales writes it
        "ok;ok@uni.edu;O;K;student;1\n"
        "bad email;x@uni.edu;;;student;1\n"
        "noemail;not-an-email;;;student;1\n"
        "who;who@uni.edu;;;professor;1\n"
        "ok;other@uni.edu;;;student;1\n"
        "dup;ok@uni.edu;;;student;1\n"
        "thief;TAKEN@uni.edu;;;student;1\n"
        "root;root@uni.edu;;;student;1\n"
    )
    roster = import_roster(course, ("\ufeff" + data).encode())  # with a byte-order mark, as Excel saves it
    reasons = {line.number: line.reason for line in roster.lines if line.action == "refused"}
    assert reasons == {
        3: "bad username 'bad email': letters, digits and @ . + - _ only",
        4: "bad email 'not-an-email'",
        5: "unknown role 'professor': use one of instructor, student, ta",
        6: "duplicate row: username also on line 2",
        7: "duplicate row: email also on line 2",
        8: "email TAKEN@uni.edu belongs to another account (taken)",
        9: "an admin account is not managed by a roster",
    }
    assert roster.summary() == "created 1, updated 0, unchanged 0, refused 7"
    assert list(Enrollment.objects.filter(course=course).values_list("user__username", flat=True)) == ["ok"]
    assert User.objects.get(username="root").is_superuser


def test_an_unreadable_file_is_refused_as_a_whole_with_what_to_fix():
    course = CourseFactory()
    with pytest.raises(RosterError, match="the header lacks email;"):
        plan(course, b"username,mail,role\nada,ada@uni.edu,student\n")
    with pytest.raises(RosterError, match="the header lacks username, email, role;"):
        plan(course, b"ada,ada@uni.edu,student\n")  # no header at all
    with pytest.raises(RosterError, match="not UTF-8"):
        plan(course, "username,email,role\nzoë,z@uni.edu,student\n".encode("latin-1"))
    with pytest.raises(RosterError, match="empty"):
        plan(course, b"")
    with pytest.raises(RosterError, match="at most"):
        plan(course, b"username,email,role\n" + b"x" * (3 * 1024 * 1024))


def test_the_command_prints_each_line_and_the_summary_and_exits_1_on_a_refused_line(tmp_path, capsys):
    course = CourseFactory(slug="sys-101")
    good = tmp_path / "roster.csv"
    good.write_text(ROSTER)
    call_command("roster", "import", "sys-101", str(good), "--dry-run")
    out = capsys.readouterr().out
    assert "line 2: ada: create (new account)" in out
    assert out.strip().endswith("dry run, nothing changed: created 3, updated 0, unchanged 0, refused 0")
    assert not Enrollment.objects.filter(course=course).exists()

    call_command("roster", "import", "sys-101", str(good))
    assert capsys.readouterr().out.strip().endswith("created 3, updated 0, unchanged 0, refused 0")

    bad = tmp_path / "bad.csv"
    bad.write_text(ROSTER + "eve,eve@uni.edu,Eve,,hacker,A\n")
    with pytest.raises(SystemExit) as exited:
        call_command("roster", "import", "sys-101", str(bad))
    assert exited.value.code == 1
    out = capsys.readouterr().out
    assert "line 5: eve: refused: unknown role 'hacker'" in out
    assert out.strip().endswith("created 0, updated 0, unchanged 3, refused 1")

    with pytest.raises(CommandError, match="no course with slug 'nope'"):
        call_command("roster", "import", "nope", str(good))
    # the audit log has the two imports that changed or refused something (not the dry run)
    log = list(course.audit.order_by("pk").values_list("actor_name", "summary"))
    assert log == [
        ("(manage.py roster import)", "Roster imported: created 3, updated 0, unchanged 0, refused 0"),
        ("(manage.py roster import)", "Roster imported: created 0, updated 0, unchanged 3, refused 1"),
    ]


# -- the staff page -------------------------------------------------------------------------------


def _roster_url(course) -> str:
    return reverse("courses:roster", args=[course.slug])


def test_an_instructor_previews_then_applies_a_roster_on_the_staff_page(client, cast):
    course = cast["course"]
    client.force_login(cast["ines"])
    course_page = client.get(reverse("courses:course", args=[course.slug])).content.decode()
    assert f'href="{_roster_url(course)}"' in course_page
    upload = SimpleUploadedFile("roster.csv", (ROSTER + "eve,eve@uni.edu,Eve,,hacker,A\n").encode())
    page = client.post(_roster_url(course), {"action": "preview", "file": upload}).content.decode()
    assert "created 3, updated 0, unchanged 0, refused 1" in page
    assert "unknown role &#x27;hacker&#x27;" in page  # escaped like everything the file says
    assert not Enrollment.objects.filter(course=course, user__username="ada").exists()  # a preview writes nothing

    done = client.post(_roster_url(course), {"action": "apply"}, follow=True)
    page = done.content.decode()
    assert "Roster imported: created 3, updated 0, unchanged 0, refused 1." in page
    assert Enrollment.objects.get(course=course, user__username="alan").role == "ta"
    assert "Lovelace" in page  # the people table lists the new enrollments
    # Applying twice needs a second preview: the file is not kept once applied.
    again = client.post(_roster_url(course), {"action": "apply"}, follow=True).content.decode()
    assert "Nothing to apply: upload the file and preview it first." in again
    entry = course.audit.get()
    assert (entry.actor_name, entry.action) == ("ines", "roster_import")
    assert "line 5: eve: refused: unknown role 'hacker': use one of instructor, student, ta" in entry.data["lines"]


def test_a_bad_file_on_the_page_says_what_to_fix(client, cast):
    client.force_login(cast["ines"])
    upload = SimpleUploadedFile("roster.csv", b"name,mail\nada,ada@uni.edu\n")
    page = client.post(_roster_url(cast["course"]), {"action": "preview", "file": upload}).content.decode()
    assert "roster.csv: the header lacks username, email, role" in page
    assert "Apply" not in page


@pytest.mark.parametrize("viewer", ["tariq", "alice", "outsider"])
def test_only_instructors_and_admins_reach_the_roster(client, cast, viewer):
    client.force_login(cast[viewer])
    assert client.get(_roster_url(cast["course"])).status_code == 404
    upload = SimpleUploadedFile("roster.csv", ROSTER.encode())
    assert client.post(_roster_url(cast["course"]), {"action": "preview", "file": upload}).status_code == 404
    assert not User.objects.filter(username="ada").exists()


def test_an_admin_reaches_the_roster_and_anonymous_users_log_in_first(client, cast):
    response = client.get(_roster_url(cast["course"]))
    assert response.status_code == 302 and "/accounts/login/" in response.url
    client.force_login(UserFactory(username="root", is_superuser=True))
    assert client.get(_roster_url(cast["course"])).status_code == 200
