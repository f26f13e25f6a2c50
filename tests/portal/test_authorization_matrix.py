"""Who may open which page: every URL route x anonymous, a student of the course, a student of
another course, the course's TA, its instructor, and a site admin (GET). A route added without a
row here fails ``test_every_route_has_a_row``. Websocket routes are covered in test_live_stream.py.

``login``: sent to the login page; a number: that status code.
"""

from __future__ import annotations

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from portal.catalog.models import LabUpload
from portal.submissions.models import Rejudge
from portal.submissions.services import submission_create
from tests.factories import CourseFactory, UserFactory

ROLES = ("anonymous", "student", "other_student", "ta", "instructor", "admin")
EVERYONE = dict.fromkeys(ROLES, 200)
SIGNED_IN = {**EVERYONE, "anonymous": "login"}
COURSE = {**SIGNED_IN, "other_student": 404}  # the course's people and admins
STAFF = {**COURSE, "student": 404}  # the course's TAs, instructors and admins
MANAGERS = {**STAFF, "ta": 404}  # the course's instructors and admins
LAB_MANAGERS = {**MANAGERS}  # instructors of any course, and admins
ADMINS = {**MANAGERS, "instructor": 404}

MATRIX = {
    "accounts:login": EVERYONE,
    "accounts:logout": dict.fromkeys(ROLES, 405),  # POST only
    "accounts:invitation": EVERYONE,  # a link that does not work says so to anyone
    "healthz": EVERYONE,
    "catalog:uploads": LAB_MANAGERS,
    "catalog:upload": LAB_MANAGERS,
    "catalog:upload_action": {**dict.fromkeys(ROLES, 405), "anonymous": "login"},  # POST only
    "submissions:mine": SIGNED_IN,
    "submissions:detail": COURSE,  # alice's submission: her own
    "submissions:mark_final": {**dict.fromkeys(ROLES, 405), "anonymous": "login"},  # POST only
    "submissions:disqualify": {**dict.fromkeys(ROLES, 405), "anonymous": "login"},  # POST only
    "submissions:job_status": COURSE,
    "courses:home": SIGNED_IN,
    "courses:course_new": ADMINS,
    "courses:course": COURSE,
    "courses:roster": MANAGERS,
    "courses:staff_assignments": MANAGERS,
    "courses:staff_assignment_edit": MANAGERS,
    "courses:course_settings": MANAGERS,
    "courses:extensions": STAFF,
    "courses:audit": MANAGERS,
    "courses:gradebook": STAFF,
    "courses:gradebook_csv": STAFF,
    "courses:rejudges": MANAGERS,
    "courses:rejudge": MANAGERS,
    "courses:assignment": COURSE,
    "courses:starter": COURSE,
    "courses:leaderboard": COURSE,
    "courses:staff_submissions": STAFF,
}


def _route_names(resolver: URLResolver | None = None, namespace: str | None = None) -> set[str]:
    names = set()
    for pattern in (resolver or get_resolver()).url_patterns:
        if isinstance(pattern, URLResolver):
            if pattern.namespace != "admin":  # Django's own, staff-only by Django
                names |= _route_names(pattern, pattern.namespace or namespace)
        elif isinstance(pattern, URLPattern):
            names.add(f"{namespace}:{pattern.name}" if namespace else pattern.name)
    return names


def test_every_route_has_a_row():
    assert _route_names() == set(MATRIX)


@pytest.fixture
def world(cast, custom_op, django_capture_on_commit_callbacks):
    other = CourseFactory(slug="other")
    olga = UserFactory(username="olga")
    other.enrollments.create(user=olga, role="student")
    submission = submission_create(student=cast["alice"], assignment=custom_op, files={"linear_op.py": "x = 1\n"})
    upload = LabUpload.objects.create(
        uploaded_by=cast["ines"], slug="my_lab", version=1, title="My lab", archive=b"", archive_sha256="0" * 64
    )
    course, slug = custom_op.course.slug, custom_op.slug
    rejudge = Rejudge.objects.create(assignment=custom_op, scope="all", lab_version=1)
    args = {
        "accounts:invitation": ["MQ", "no-such-token"],
        "catalog:upload": [upload.pk],
        "catalog:upload_action": [upload.pk, "check"],
        "submissions:detail": [submission.pk],
        "submissions:mark_final": [submission.pk],
        "submissions:disqualify": [submission.pk],
        "submissions:job_status": [submission.jobs.get().pk],
        "courses:course": [course],
        "courses:roster": [course],
        "courses:staff_assignments": [course],
        "courses:staff_assignment_edit": [course, slug],
        "courses:course_settings": [course],
        "courses:extensions": [course],
        "courses:audit": [course],
        "courses:gradebook": [course],
        "courses:gradebook_csv": [course],
        "courses:rejudges": [course],
        "courses:rejudge": [course, rejudge.pk],
        "courses:assignment": [course, slug],
        "courses:starter": [course, slug],
        "courses:leaderboard": [course, slug],
        "courses:staff_submissions": [course, slug],
    }
    people = {
        "anonymous": None,
        "student": cast["alice"],
        "other_student": olga,
        "ta": cast["tariq"],
        "instructor": cast["ines"],
        "admin": UserFactory(username="root", is_superuser=True),
    }
    return args, people


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_what_the_matrix_says(client, world, role):
    args, people = world
    if people[role] is not None:
        client.force_login(people[role])
    got, wanted = {}, {}
    for name, row in MATRIX.items():
        response = client.get(reverse(name, args=args.get(name, [])))
        status = response.status_code
        if status == 302 and "/accounts/login/" in response.url:
            status = "login"
        got[name], wanted[name] = status, row[role]
    assert got == wanted
