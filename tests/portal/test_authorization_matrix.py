"""Who may open which page or websocket: every URL and websocket route x anonymous, a student of
the course, a student of another course, the course's TA, its instructor, and a site admin (GET,
or a websocket connect). A route added without a row here fails ``test_every_route_has_a_row``.

``login``: sent to the login page; a number: that status code; ``open`` / ``refused``: the
websocket's answer.
"""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from portal.asgi import application
from portal.catalog.models import LabUpload
from portal.courses.services import assignment_create
from portal.lti.models import LtiContext, LtiPlatform, LtiResourceLink
from portal.routing import websocket_urlpatterns
from portal.submissions.models import Rejudge
from portal.submissions.services import submission_create
from tests.factories import CourseFactory, UserFactory
from tests.portal.test_oidc import configure_sso

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
    "submissions:submit": {**dict.fromkeys(ROLES, 405), "anonymous": "login"},  # POST only
    "submissions:mine": SIGNED_IN,
    "submissions:detail": COURSE,  # alice's submission: her own
    "submissions:mark_final": {**dict.fromkeys(ROLES, 405), "anonymous": "login"},  # POST only
    "submissions:disqualify": {**dict.fromkeys(ROLES, 405), "anonymous": "login"},  # POST only
    "submissions:job_status": COURSE,
    "courses:home": SIGNED_IN,
    "courses:course_new": ADMINS,
    "courses:course": COURSE,
    "courses:roster": MANAGERS,
    "courses:nickname": {**dict.fromkeys(ROLES, 405), "anonymous": "login"},  # POST only
    "courses:team": {**dict.fromkeys(ROLES, 405), "anonymous": "login"},  # POST only
    "courses:teams": MANAGERS,
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
    "leaderboards:leaderboard": COURSE,
    "courses:staff_submissions": STAFF,
    "analytics:assignment": STAFF,
    "lti:login": dict.fromkeys(ROLES, 400),  # public by protocol (the LMS's login initiation); without its iss: 400
    "lti:launch": dict.fromkeys(ROLES, 405),  # public by protocol, POST only: the LMS's signed id_token decides
    "lti:jwks": EVERYONE,  # public by protocol: the tool's public keys
    "lti:config": ADMINS,
    "lti:context": ADMINS,  # an unlinked LMS course: admins; instructors just after launching it (test_lti)
    "lti:resource_link": MANAGERS,  # an LMS link of an LMS course linked to the course
    "lti:roster_sync": {**dict.fromkeys(ROLES, 405), "anonymous": "login"},  # POST only
}


# Single sign-on's routes exist only where OIDC is configured at start-up (portal/urls.py), which the
# suite is not: ``test_each_role_gets_what_the_sso_rows_say`` checks these rows with it configured.
SSO_MATRIX = {
    "oidc_authentication_init": dict.fromkeys(ROLES, 302),  # to the provider's login
    "oidc_authentication_callback": dict.fromkeys(ROLES, "login"),  # without the provider's code
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
    assert _route_names() == set(MATRIX) | (set(SSO_MATRIX) if settings.OIDC_ENABLED else set())
    assert {str(route.pattern) for route in websocket_urlpatterns} == {pattern for pattern, _ in WS_MATRIX}


OPEN, REFUSED = "open", "refused"
WS_COURSE = {**dict.fromkeys(ROLES, OPEN), "anonymous": REFUSED, "other_student": REFUSED}
WS_STAFF = {**WS_COURSE, "student": REFUSED}
WS_MATRIX = {
    ("ws/jobs/<int:job_id>/", "alice's job"): WS_COURSE,
    ("ws/assignments/<int:assignment_id>/leaderboard/", "a visible assignment"): WS_COURSE,
    ("ws/assignments/<int:assignment_id>/leaderboard/", "a hidden assignment"): WS_STAFF,
    # an archived course's pages answer 404 to all (courses.selectors.assignment_for_user); so does its socket
    ("ws/assignments/<int:assignment_id>/leaderboard/", "an archived course's assignment"): dict.fromkeys(
        ROLES, REFUSED
    ),
}


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
    lms = LtiPlatform.objects.create(
        name="LMS",
        issuer="https://lms.example.edu",
        client_id="c1",
        auth_login_url="https://lms.example.edu/auth",
        auth_token_url="https://lms.example.edu/token",
        key_set_url="https://lms.example.edu/jwks",
    )
    unlinked = LtiContext.objects.create(platform=lms, context_id="ctx-unlinked")
    lms_link = LtiResourceLink.objects.create(
        platform=lms,
        context=LtiContext.objects.create(platform=lms, context_id="ctx-linked", course=custom_op.course),
        resource_link_id="rl-1",
    )
    args = {
        "accounts:invitation": ["MQ", "no-such-token"],
        "catalog:upload": [upload.pk],
        "catalog:upload_action": [upload.pk, "check"],
        "submissions:submit": [course, slug],
        "submissions:detail": [submission.pk],
        "submissions:mark_final": [submission.pk],
        "submissions:disqualify": [submission.pk],
        "submissions:job_status": [submission.jobs.get().pk],
        "courses:course": [course],
        "courses:roster": [course],
        "courses:nickname": [course],
        "courses:team": [course],
        "courses:teams": [course],
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
        "leaderboards:leaderboard": [course, slug],
        "courses:staff_submissions": [course, slug],
        "analytics:assignment": [course, slug],
        "lti:context": [unlinked.pk],
        "lti:resource_link": [lms_link.pk],
        "lti:roster_sync": [course],
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


def test_each_role_gets_what_the_sso_rows_say(world, settings):
    configure_sso(settings, provider_url="http://127.0.0.1:9", discovery=False)  # nothing is asked of it
    assert _route_names() == set(MATRIX) | set(SSO_MATRIX)  # a new oidc/ route needs its row
    _, people = world
    got, wanted = {}, {}
    for role, person in people.items():
        client = Client()
        if person is not None:
            client.force_login(person)
        for name, row in SSO_MATRIX.items():
            response = client.get(reverse(name))
            status = response.status_code
            if status == 302 and "/accounts/login/" in response.url:
                status = "login"
            got[(name, role)], wanted[(name, role)] = status, row[role]
    assert got == wanted


def _ws_world(cast, custom_op):
    hidden = assignment_create(
        course=custom_op.course, lab=custom_op.lab, slug="hidden", due_at=custom_op.due_at, is_visible=False
    )
    archived = CourseFactory(slug="archived", is_active=False)
    for name, role in (("alice", "student"), ("tariq", "ta"), ("ines", "instructor")):
        archived.enrollments.create(user=cast[name], role=role)
    old_work = assignment_create(course=archived, lab=custom_op.lab, slug="old", due_at=custom_op.due_at)
    world = {}
    job = submission_create(student=cast["alice"], assignment=custom_op, files={"linear_op.py": "x = 1\n"}).jobs.get()
    paths = {
        "alice's job": f"/ws/jobs/{job.pk}/",
        "a visible assignment": f"/ws/assignments/{custom_op.pk}/leaderboard/",
        "a hidden assignment": f"/ws/assignments/{hidden.pk}/leaderboard/",
        "an archived course's assignment": f"/ws/assignments/{old_work.pk}/leaderboard/",
    }
    other = CourseFactory(slug="other")
    olga = UserFactory(username="olga")
    other.enrollments.create(user=olga, role="student")
    root = UserFactory(username="root", is_superuser=True)
    people = {"student": cast["alice"], "other_student": olga, "ta": cast["tariq"], "instructor": cast["ines"]}
    for role, user in {**people, "admin": root}.items():
        client = Client()
        client.force_login(user)
        world[role] = [
            (b"cookie", f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode())
        ]
    world["anonymous"] = []
    return paths, world


@pytest.mark.django_db(transaction=True)
async def test_each_role_gets_what_the_websocket_matrix_says(cast, custom_op):
    paths, headers = await database_sync_to_async(_ws_world)(cast, custom_op)
    got, wanted = {}, {}
    for (_, what), row in WS_MATRIX.items():
        for role in ROLES:
            communicator = WebsocketCommunicator(
                application, paths[what], headers=[*headers[role], (b"origin", b"http://testserver")]
            )
            connected, _ = await communicator.connect(timeout=5)
            got[(what, role)], wanted[(what, role)] = OPEN if connected else REFUSED, row[role]
            await communicator.disconnect()
    assert got == wanted
