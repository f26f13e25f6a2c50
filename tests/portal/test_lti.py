"""LTI 1.3 against an LMS the test plays itself: its own RSA key and JWKS, its OAuth2 token
endpoint (which checks the portal's signed client assertion against the portal's own JWKS), a
Names and Roles membership and an AGS line item that records every score posted to it, all served
by an http.server on 127.0.0.1. Nothing of pylti1p3 or of HTTP is replaced: the portal fetches the
LMS's keys, tokens, members and posts scores over real sockets.

Launch: OIDC login initiation -> the cookie check -> the LMS's authorization URL with state and
nonce -> a signed id_token posted back -> logged in, enrolled, at the assignment. Refusals: another
key, another audience, a replayed nonce, an unknown deployment. Roster sync and grade passback."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import transaction
from django.test import Client
from django.urls import reverse

from portal.celery import app as celery_app
from portal.courses.gradebook import override_set
from portal.courses.models import AuditEntry, Enrollment
from portal.lti import services as lti_services
from portal.lti.models import LtiContext, LtiGradePassback, LtiPlatform, LtiResourceLink, LtiUser
from portal.lti.services import LtiRefused, lti_grade_changed, lti_grade_passback
from portal.lti.tasks import GRADE_PASSBACK, PASSBACK_MAX_RETRIES, grade_passback
from portal.submissions.models import Job, Submission
from portal.submissions.services import job_record_result
from tests.conftest import free_port

pytestmark = pytest.mark.django_db

ISSUER = "https://lms.example.edu"
CLIENT_ID = "portal-client-1"
DEPLOYMENT = "deploy-1"
LTI = "https://purl.imsglobal.org/spec/lti/claim/"
ROLE = "http://purl.imsglobal.org/vocab/lis/v2/membership#"
TA_ROLE = "http://purl.imsglobal.org/vocab/lis/v2/membership/Instructor#TeachingAssistant"
SCORE_SCOPE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
NRPS_SCOPE = "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly"
LINEITEM_SCOPE = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem"
AGS_SCOPES = [LINEITEM_SCOPE, SCORE_SCOPE]


class FakeLms:
    """The LMS side: keys, token endpoint, memberships, a line item's scores; records requests."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "lms-key-1"
        self.tool_jwks: dict = {"keys": []}  # the portal's, as served at lti/jwks/
        self.tokens: dict[str, list[str]] = {}  # access token -> scopes granted
        self.assertions: list[dict] = []  # the verified client assertions' claims
        self.members: list[dict] = []
        self.endless = False  # the memberships answer names itself as its next page, for ever
        self.scores: list[dict] = []
        self.lineitems: list[dict] = []  # those the tool created
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.lms = self
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def jwks(self) -> dict:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]}

    def id_token(self, claims: dict, *, key=None) -> str:
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": self.kid})

    def grant(self, form: dict[str, str]) -> tuple[int, dict]:
        """OAuth2 client credentials with a JWT assertion signed by the tool's key (RFC 7523)."""
        if form.get("grant_type") != "client_credentials" or form.get("client_assertion_type") != (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ):
            return 400, {"error": "unsupported_grant_type"}
        assertion = form.get("client_assertion", "")
        kid = jwt.get_unverified_header(assertion).get("kid")
        keys = [k for k in self.tool_jwks["keys"] if k.get("kid") == kid]
        if not keys:
            return 401, {"error": "invalid_client", "error_description": f"unknown kid {kid}"}
        try:
            claims = jwt.decode(
                assertion, jwt.PyJWK(keys[0]).key, algorithms=["RS256"], audience=self.url("/token"), issuer=CLIENT_ID
            )
        except jwt.InvalidTokenError as exc:
            return 401, {"error": "invalid_client", "error_description": str(exc)}
        if claims.get("sub") != CLIENT_ID:
            return 401, {"error": "invalid_client"}
        self.assertions.append(claims)
        token = "tok-" + uuid.uuid4().hex
        self.tokens[token] = form.get("scope", "").split()
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600, "scope": form.get("scope")}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self, status: int, body: object, content_type: str = "application/json", link: str = "") -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if link:
            self.send_header("Link", f'<{link}>; rel="next"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _scopes(self) -> list[str] | None:
        header = self.headers.get("Authorization", "")
        return self.server.lms.tokens.get(header.removeprefix("Bearer ")) if header.startswith("Bearer ") else None

    def do_GET(self):
        lms = self.server.lms
        if self.path == "/jwks":
            return self._answer(200, lms.jwks())
        if self.path.startswith("/memberships"):
            if NRPS_SCOPE not in (self._scopes() or []):
                return self._answer(401, {"error": "no token for Names and Roles"})
            body = {"id": self.path, "context": {"id": "ctx-1", "title": "AI Systems"}, "members": lms.members}
            more = lms.url(self.path) if lms.endless else ""
            return self._answer(200, body, "application/vnd.ims.lti-nrps.v2.membershipcontainer+json", more)
        if self.path == "/lineitems":
            if LINEITEM_SCOPE not in (self._scopes() or []):
                return self._answer(401, {"error": "no token for line items"})
            return self._answer(200, lms.lineitems, "application/vnd.ims.lis.v2.lineitemcontainer+json")
        self._answer(404, {"error": "not found"})

    def do_POST(self):
        lms = self.server.lms
        data = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        if self.path == "/token":
            return self._answer(*lms.grant({k: v[0] for k, v in parse_qs(data).items()}))
        if self.path == "/lineitems":
            if LINEITEM_SCOPE not in (self._scopes() or []):
                return self._answer(401, {"error": "no token for line items"})
            lms.lineitems.append({**json.loads(data), "id": lms.url("/lineitems/1")})
            return self._answer(201, lms.lineitems[-1], "application/vnd.ims.lis.v2.lineitem+json")
        if self.path == "/lineitems/1/scores":
            if SCORE_SCOPE not in (self._scopes() or []):
                return self._answer(401, {"error": "no token for scores"})
            token = self.headers["Authorization"].removeprefix("Bearer ")
            lms.scores.append(
                {"token": token, "content_type": self.headers.get("Content-Type"), "body": json.loads(data)}
            )
            return self._answer(200, {})
        self._answer(404, {"error": "not found"})


@pytest.fixture
def lms():
    fake = FakeLms()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def platform(lms):
    """Registered as a site admin does in Django admin; the tool's key is made with the row."""
    registered = LtiPlatform.objects.create(
        name="Test LMS",
        issuer=ISSUER,
        client_id=CLIENT_ID,
        deployment_ids=f"{DEPLOYMENT}\n",
        auth_login_url=lms.url("/auth"),
        auth_token_url=lms.url("/token"),
        key_set_url=lms.url("/jwks"),
    )
    lms.tool_jwks = Client().get(reverse("lti:jwks")).json()  # what the LMS reads from the portal
    return registered


def claims_for(lms, *, sub, roles, email, nonce, name=("", ""), aud=CLIENT_ID, deployment=DEPLOYMENT, clock=0) -> dict:
    """An LMS's launch claims; ``clock``: seconds the LMS's clock is ahead of ours (behind if negative)."""
    now = int(time.time()) + clock
    return {
        "iss": ISSUER,
        "aud": aud,
        "sub": sub,
        "iat": now,
        "exp": now + 300,
        "nonce": nonce,
        "email": email,
        "given_name": name[0],
        "family_name": name[1],
        LTI + "message_type": "LtiResourceLinkRequest",
        LTI + "version": "1.3.0",
        LTI + "deployment_id": deployment,
        LTI + "target_link_uri": settings.PORTAL_URL + "/lti/launch/",
        LTI + "roles": roles,
        LTI + "context": {"id": "ctx-1", "label": "AISYS", "title": "AI Systems (LMS)"},
        LTI + "resource_link": {"id": "rl-1", "title": "Custom operator"},
        "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint": {
            "scope": AGS_SCOPES,
            "lineitems": lms.url("/lineitems"),
            "lineitem": lms.url("/lineitems/1"),
        },
        "https://purl.imsglobal.org/spec/lti-nrps/claim/namesroleservice": {
            "context_memberships_url": lms.url("/memberships"),
            "service_versions": ["2.0"],
        },
    }


def start_login(client, lms, *, sub: str) -> tuple[str, str]:
    """The LMS's login initiation (POST, as Canvas sends it), the cookie check, then the redirect
    to the LMS's authorization endpoint: its state and nonce."""
    initiation = {
        "iss": ISSUER,
        "login_hint": sub,
        "target_link_uri": settings.PORTAL_URL + "/lti/launch/",
        "lti_message_hint": "hint-1",
        "client_id": CLIENT_ID,
        "lti_deployment_id": DEPLOYMENT,
    }
    check = client.post(reverse("lti:login"), initiation)
    assert check.status_code == 200 and b"lti1p3_new_window" in check.content  # the cookie check page
    assert b"Open AISys Labs in a new window" in check.content
    answer = client.get(reverse("lti:login"), {**initiation, "lti1p3_new_window": "1"})
    assert answer.status_code == 302
    where = urlparse(answer.url)
    params = {k: v[0] for k, v in parse_qs(where.query).items()}
    assert f"{where.scheme}://{where.netloc}{where.path}" == lms.url("/auth")
    assert params["redirect_uri"] == settings.PORTAL_URL + "/lti/launch/"
    assert (params["client_id"], params["login_hint"], params["lti_message_hint"]) == (CLIENT_ID, sub, "hint-1")
    assert (params["response_type"], params["response_mode"], params["scope"]) == ("id_token", "form_post", "openid")
    return params["state"], params["nonce"]


def launch(client, lms, *, sub, roles, email, name=("", ""), key=None, **overrides):
    state, nonce = start_login(client, lms, sub=sub)
    claims = claims_for(lms, sub=sub, roles=roles, email=email, nonce=nonce, name=name, **overrides)
    token = lms.id_token(claims, key=key)
    return client.post(reverse("lti:launch"), {"id_token": token, "state": state}), token, state


def logged_in(client) -> User | None:
    user_id = client.session.get("_auth_user_id")
    return User.objects.get(pk=user_id) if user_id else None


@pytest.fixture
def linked(cast, custom_op, platform, lms):
    """The instructor's first launch: the LMS course linked to the portal's, its link to custom_op."""
    client = Client()
    answer, _, _ = launch(client, lms, sub="u-ines", roles=[ROLE + "Instructor"], email="ines@example.edu")
    context = LtiContext.objects.get(platform=platform, context_id="ctx-1")
    link = LtiResourceLink.objects.get(platform=platform, resource_link_id="rl-1")
    assert answer.status_code == 302 and answer.url == reverse("lti:context", args=[context.pk]) + f"?link={link.pk}"
    assert logged_in(client) == cast["ines"]  # matched by email to her roster account
    chosen = client.post(answer.url, {"course": cast["course"].slug})
    assert chosen.status_code == 302 and chosen.url == reverse("lti:resource_link", args=[link.pk])
    done = client.post(chosen.url, {"assignment": custom_op.slug})
    assert done.url == reverse("courses:assignment", args=[cast["course"].slug, custom_op.slug])
    return {
        **cast,
        "assignment": custom_op,
        "platform": platform,
        "context": context,
        "link": link,
    }


def test_a_launch_logs_in_enrolls_and_lands_on_the_assignment(linked, lms):
    link, course, context = linked["link"], linked["course"], linked["context"]
    link.refresh_from_db()
    context.refresh_from_db()
    assert link.assignment == linked["assignment"] and link.linked_at is not None
    assert (link.lineitem_url, link.ags_scopes) == (lms.url("/lineitems/1"), AGS_SCOPES)
    assert context.course == course and context.memberships_url == lms.url("/memberships")
    assert LtiUser.objects.get(platform=linked["platform"], sub="u-ines").user == linked["ines"]
    summaries = list(AuditEntry.objects.filter(course=course).values_list("summary", flat=True))
    assert "LMS course AI Systems (LMS) (Test LMS) linked to this course" in summaries

    # A student new to the portal: an account made from the LMS's claims, enrolled as a student.
    client = Client()
    answer, _, _ = launch(
        client, lms, sub="u-dana", roles=[ROLE + "Learner"], email="dana@uni.edu", name=("Dana", "Scully")
    )
    assert answer.status_code == 302
    assert answer.url == reverse("courses:assignment", args=[course.slug, linked["assignment"].slug])
    dana = User.objects.get(email="dana@uni.edu")
    assert (dana.username, dana.first_name, dana.last_name) == ("dana", "Dana", "Scully")
    assert not dana.has_usable_password()
    assert logged_in(client) == dana
    # a launch that brings nothing new writes neither the context nor the link (their rows are shared)
    assert LtiResourceLink.objects.get(pk=link.pk).updated_at == link.updated_at
    assert LtiContext.objects.get(pk=context.pk).updated_at == context.updated_at
    assert Enrollment.objects.get(course=course, user=dana).role == "student"
    assert LtiUser.objects.get(platform=linked["platform"], sub="u-dana").user == dana
    assert client.get(answer.url).status_code == 200  # the assignment page, as her

    # A roster student by email, and a TA whose LMS role makes her one here.
    client = Client()
    launch(client, lms, sub="u-alice", roles=[ROLE + "Learner"], email="ALICE@example.edu")
    assert logged_in(client) == linked["alice"]
    client = Client()
    launch(client, lms, sub="u-tess", roles=[TA_ROLE, ROLE + "Instructor"], email="tess@uni.edu")
    assert Enrollment.objects.get(course=course, user__email="tess@uni.edu").role == "ta"
    # Later launches go by the LMS's id, whatever email the LMS sends then.
    client = Client()
    launch(client, lms, sub="u-dana", roles=[ROLE + "Learner"], email="dana.scully@uni.edu")
    assert logged_in(client) == dana


def test_an_lms_course_not_linked_yet(cast, custom_op, platform, lms):
    client = Client()
    answer, _, _ = launch(client, lms, sub="u-stu", roles=[ROLE + "Learner"], email="stu@uni.edu")
    assert answer.status_code == 200
    assert b"This course is not set up yet in AISys Labs: ask your instructor." in answer.content
    assert logged_in(client) is None and not User.objects.filter(email="stu@uni.edu").exists()
    # An instructor without a portal account is told whom to ask, with the page to link it at.
    client = Client()
    answer, _, _ = launch(client, lms, sub="u-new", roles=[ROLE + "Instructor"], email="new@uni.edu")
    context = LtiContext.objects.get(context_id="ctx-1")
    assert answer.status_code == 200 and b"must be linked once to a course of the portal" in answer.content
    assert reverse("lti:context", args=[context.pk]).encode() in answer.content
    assert logged_in(client) is None
    # Linking it is for a site admin, or an instructor who launched it as its instructor: not for
    # an instructor who merely knows its number, nor for a TA.
    for name in ("ines", "tariq"):
        client = Client()
        client.force_login(cast[name])
        assert client.get(reverse("lti:context", args=[context.pk])).status_code == 404
    # An LMS TA who instructs some portal course does not get to link the LMS course either.
    client = Client()
    answer, _, _ = launch(client, lms, sub="u-ines", roles=[TA_ROLE], email="ines@example.edu")
    assert b"This course is not set up yet in AISys Labs: ask your instructor." in answer.content
    assert logged_in(client) is None


def test_an_lms_clock_a_little_ahead_still_launches_and_an_expired_token_says_so(linked, lms):
    learner = {"sub": "u-eve", "roles": [ROLE + "Learner"], "email": "eve@uni.edu"}
    client = Client()
    answer, _, _ = launch(client, lms, **learner, clock=30)  # issued "in 30 s": within the minute's leeway
    assert answer.status_code == 302 and logged_in(client) is not None
    client = Client()
    answer, _, _ = launch(client, lms, **learner, clock=-900)  # expired 10 minutes ago
    assert answer.status_code == 403 and logged_in(client) is None
    assert "token has expired or is not valid yet (Signature has expired)" in answer.content.decode()
    assert not [key for key in client.session.keys() if key.startswith("lti1p3-launch-")]


@pytest.mark.parametrize(
    "case, status, message",
    [
        ("another key", 403, "signature could not be verified"),
        ("another audience", 403, "which is not registered with this portal"),
        ("replayed nonce", 403, "used already"),
        ("unknown deployment", 403, "deployment of https://lms.example.edu that is not registered"),
    ],
)
def test_a_launch_that_fails_a_check_logs_nobody_in(linked, lms, case, status, message):
    client = Client()
    learner = {"sub": "u-eve", "roles": [ROLE + "Learner"], "email": "eve@uni.edu"}
    if case == "another key":
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        answer, _, _ = launch(client, lms, **learner, key=stranger)
    elif case == "another audience":
        answer, _, _ = launch(client, lms, **learner, aud="another-tool")
    elif case == "unknown deployment":
        answer, _, _ = launch(client, lms, **learner, deployment="deploy-999")
    else:
        first, token, state = launch(client, lms, **learner)
        assert first.status_code == 302 and logged_in(client) is not None
        state_cookies = {name: morsel.value for name, morsel in client.cookies.items() if name.startswith("lti1p3-")}
        client.logout()  # the same browser (its state cookie kept), logged out
        client.cookies.load(state_cookies)
        answer = client.post(reverse("lti:launch"), {"id_token": token, "state": state})
        assert answer.status_code == 403 and logged_in(client) is None
        # Even where the session still holds the nonce (the same token posted twice at once), it is spent.
        session = client.session
        session[f"lti1p3-nonce-{jwt.decode(token, options={'verify_signature': False})['nonce']}"] = True
        session.save()
        answer = client.post(reverse("lti:launch"), {"id_token": token, "state": state})
        assert "its nonce is spent" in answer.content.decode()
    assert answer.status_code == status, answer.content.decode()[:500]
    assert message in answer.content.decode().replace("&#x27;", "'")
    assert logged_in(client) is None
    if case != "replayed nonce":
        assert not User.objects.filter(email="eve@uni.edu").exists()


def test_roster_sync_through_names_and_roles(linked, lms, client, monkeypatch):
    lms.members = [
        {"user_id": "u-alice", "email": "alice@example.edu", "given_name": "Alice", "roles": [ROLE + "Learner"]},
        {"user_id": "u-erin", "email": "erin@uni.edu", "given_name": "Erin", "roles": [ROLE + "Learner"]},
        {"user_id": "u-tariq", "email": "tariq@example.edu", "roles": [TA_ROLE]},
        {"user_id": "u-gone", "email": "gone@uni.edu", "status": "Inactive", "roles": [ROLE + "Learner"]},
        {"user_id": "u-mentor", "email": "mo@uni.edu", "roles": [ROLE + "Mentor"]},
    ]
    course = linked["course"]
    client.force_login(linked["ines"])
    assert b"Sync roster from the LMS" in client.get(reverse("courses:roster", args=[course.slug])).content
    answer = client.post(reverse("lti:roster_sync", args=[course.slug]), follow=True)
    text = answer.content.decode()
    assert "created 1, updated 1, unchanged 1, refused 1, 1 inactive in the LMS left as they are" in text
    assert "mo@uni.edu: refused: no Learner, TeachingAssistant or Instructor role (Mentor)" in text
    erin = User.objects.get(email="erin@uni.edu")
    assert Enrollment.objects.get(course=course, user=erin).role == "student"
    assert User.objects.get(username="alice").first_name == "Alice"
    assert {i.sub: i.user.username for i in LtiUser.objects.filter(sub__in=["u-alice", "u-erin", "u-tariq"])} == {
        "u-alice": "alice",
        "u-erin": erin.username,
        "u-tariq": "tariq",
    }
    assert not User.objects.filter(email="gone@uni.edu").exists()
    entry = AuditEntry.objects.filter(course=course, action="roster_import").first()
    assert entry.summary.startswith("Roster synced from Test LMS (AI Systems (LMS)): created 1, updated 1")
    assert entry.actor == linked["ines"]
    # The token the LMS granted was for Names and Roles, asked for with the tool's signed assertion.
    assert any(NRPS_SCOPE in scopes for scopes in lms.tokens.values())
    assert lms.assertions and all(a["iss"] == a["sub"] == CLIENT_ID for a in lms.assertions)

    # An LMS whose pages never end is not followed for ever, and nothing changes.
    lms.endless = True
    monkeypatch.setattr(lti_services, "MAX_MEMBER_PAGES", 3)
    with pytest.raises(LtiRefused, match="more than 3 pages or 20,000 members; nothing was changed"):
        lti_services.lti_roster_sync(context=LtiContext.objects.get(pk=linked["context"].pk), actor=linked["ines"])
    assert AuditEntry.objects.filter(course=course, action="roster_import").count() == 1
    lms.endless = False

    # Again from the command line: nothing to change; the refused line still refused (exit 1).
    from io import StringIO

    out = StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("lti", "sync-roster", course.slug, stdout=out)
    assert exited.value.code == 1
    assert "created 0, updated 0, unchanged 3, refused 1" in out.getvalue()


@pytest.fixture
def eager(monkeypatch):
    """Celery runs a task where it is sent, its retries at once: only for the retry policy's test."""
    monkeypatch.setattr(celery_app.conf, "task_always_eager", True)


@pytest.fixture
def portal_queue(private_broker):
    """Run what was sent to the portal queue (a private Redis) as its worker does; returns each
    message's kwargs, having checked it is a grade passback."""

    def run() -> list[dict]:
        sent, client = [], private_broker.client()
        while (raw := client.rpop("portal")) is not None:
            envelope = json.loads(raw)
            assert envelope["headers"]["task"] == GRADE_PASSBACK
            kwargs = json.loads(base64.b64decode(envelope["body"]))[1]
            grade_passback.apply(kwargs=kwargs)
            sent.append(kwargs)
        return sent

    return run


def test_grade_passback_sends_the_final_score(linked, lms, portal_queue, django_capture_on_commit_callbacks):
    assignment, alice, bob = linked["assignment"], linked["alice"], linked["bob"]
    launch(Client(), lms, sub="u-alice", roles=[ROLE + "Learner"], email="alice@example.edu")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with transaction.atomic():
            # an override is a final grade changed: override_set tells the LMS (after commit)
            override_set(assignment=assignment, student=alice, score=87.5, reason="regrade", by=linked["ines"])
    assert len(callbacks) == 1
    assert portal_queue() == [{"assignment_id": assignment.pk, "student_id": alice.pk}]
    assert len(lms.scores) == 1
    sent = lms.scores[0]
    assert sent["content_type"] == "application/vnd.ims.lis.v1.score+json"
    assert SCORE_SCOPE in lms.tokens[sent["token"]]  # the bearer token the LMS issued for scores
    timestamp = sent["body"].pop("timestamp")
    assert datetime.fromisoformat(timestamp).tzinfo is not None
    assert sent["body"] == {
        "scoreGiven": 87.5,
        "scoreMaximum": 100.0,
        "activityProgress": "Completed",
        "gradingProgress": "FullyGraded",
        "userId": "u-alice",
    }
    record = LtiGradePassback.objects.get(student=alice)
    assert (record.status, record.score, record.attempts) == ("sent", 87.5, 0)

    # Idempotent: the same score is not sent twice; a changed one is.
    assert grade_passback.apply(kwargs={"assignment_id": assignment.pk, "student_id": alice.pk}).get() == [
        {"resource_link_id": linked["link"].pk, "outcome": "unchanged", "score": 87.5}
    ]
    override_set(assignment=assignment, student=alice, score=91, reason="regrade 2", by=linked["ines"])
    grade_passback.apply(kwargs={"assignment_id": assignment.pk, "student_id": alice.pk})
    assert [s["body"]["scoreGiven"] for s in lms.scores] == [87.5, 91]

    # A student without an LMS identity: one query, nothing queued, nothing sent.
    with django_capture_on_commit_callbacks() as callbacks:
        lti_grade_changed(assignment_id=assignment.pk, student_id=bob.pk)
    assert callbacks == [] and lti_grade_passback(assignment=assignment, student=bob) == []
    assert len(lms.scores) == 2

    # manage.py lti push-grades: alice's score was sent already.
    from io import StringIO

    out = StringIO()
    call_command("lti", "push-grades", linked["course"].slug, assignment.slug, stdout=out)
    assert "alice: 91: unchanged" in out.getvalue()


def test_a_recorded_grading_sends_the_student_s_new_final_score(
    linked, lms, portal_queue, django_capture_on_commit_callbacks
):
    """job_record_result is the other place a final grade changes: the LMS hears of it."""
    assignment, alice = linked["assignment"], linked["alice"]
    launch(Client(), lms, sub="u-alice", roles=[ROLE + "Learner"], email="alice@example.edu")
    submission = Submission.objects.create(assignment=assignment, student=alice)
    job = Job.objects.create(submission=submission, seed=1, lab_version=1, state="running")
    result = {"job_id": job.pk, "verdict": "failed", "reason": "wrong_answer", "score": 66.0, "metric": None}
    with django_capture_on_commit_callbacks(execute=True):
        job_record_result(job_id=job.pk, result={**result, "summary": "1 of 3 tests failed: t"})
    assert portal_queue() == [{"assignment_id": assignment.pk, "student_id": alice.pk}]
    assert [(s["body"]["scoreGiven"], s["body"]["userId"]) for s in lms.scores] == [(66.0, "u-alice")]


def test_a_link_without_a_line_item_gets_one(linked, lms):
    """Moodle gives no line item for a link that is not a graded activity: the tool makes one."""
    assignment, alice = linked["assignment"], linked["alice"]
    launch(Client(), lms, sub="u-alice", roles=[ROLE + "Learner"], email="alice@example.edu")
    LtiResourceLink.objects.filter(pk=linked["link"].pk).update(lineitem_url="")
    override_set(assignment=assignment, student=alice, score=64, reason="oral exam", by=linked["ines"])
    [result] = lti_grade_passback(assignment=assignment, student=alice)
    assert (result.outcome, result.score) == ("sent", 64)
    assert lms.lineitems == [
        {
            "id": lms.url("/lineitems/1"),
            "label": assignment.title,
            "scoreMaximum": 100.0,
            "resourceLinkId": "rl-1",
            "tag": f"aisys:{assignment.course.slug}/{assignment.slug}",
        }
    ]
    assert [s["body"]["scoreGiven"] for s in lms.scores] == [64]
    assert LtiResourceLink.objects.get(pk=linked["link"].pk).lineitem_url == lms.url("/lineitems/1")


def test_an_unreachable_lms_is_recorded_and_grading_goes_on(
    linked, lms, eager, django_capture_on_commit_callbacks, caplog
):
    assignment, alice = linked["assignment"], linked["alice"]
    launch(Client(), lms, sub="u-alice", roles=[ROLE + "Learner"], email="alice@example.edu")
    platform = linked["platform"]
    platform.auth_token_url = f"http://127.0.0.1:{free_port()}/token"  # nothing listens there
    platform.save()
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            override_set(assignment=assignment, student=alice, score=70, reason="late fix", by=linked["ines"])
    assert assignment.overrides.get(student=alice).score == 70  # grading went on
    record = LtiGradePassback.objects.get(student=alice)
    assert (record.status, record.score, record.attempts) == ("failed", 70, PASSBACK_MAX_RETRIES + 1)
    assert "could not be reached" in record.last_error and "ConnectionError" in record.last_error
    assert lms.scores == []
    assert "LTI grade passback given up after 6 tries" in caplog.text


def test_the_tool_publishes_its_keys_and_its_settings(platform, cast):
    keys = Client().get(reverse("lti:jwks")).json()["keys"]
    assert [k["kid"] for k in keys] == [platform.tool_key_id]
    assert {k["kty"] for k in keys} == {"RSA"} and all("d" not in k for k in keys)  # public halves only
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.edu", "pw-for-tests-1"))
    page = client.get(reverse("lti:config")).content.decode()
    assert settings.PORTAL_URL + "/lti/login/" in page and settings.PORTAL_URL + "/lti/jwks/" in page
    assert CLIENT_ID in page and platform.tool_key_id in page


def test_the_state_cookie_survives_the_lms_cross_site_post(platform, lms, settings):
    """Behind a proxy that terminates TLS, Django may see http: the state cookie is still made
    SameSite=None; Secure where the portal's cookies are secure, or the launch would lose it."""
    settings.SESSION_COOKIE_SECURE = True
    answer = Client().get(
        reverse("lti:login"),
        {"iss": ISSUER, "login_hint": "u-1", "client_id": CLIENT_ID, "lti1p3_new_window": "1"},
    )
    [state] = [morsel for name, morsel in answer.cookies.items() if name.startswith("lti1p3-state-")]
    assert (state["samesite"], state["secure"], state["httponly"]) == ("None", True, True)


def test_the_lms_pages_named_may_frame_the_portal_and_no_other(cast, settings):
    client = Client()
    client.force_login(cast["alice"])
    assert client.get(reverse("courses:home"))["X-Frame-Options"] == "DENY"  # the default: no frames
    settings.LTI_FRAME_ANCESTORS = ["https://canvas.uni.edu", "https://moodle.uni.edu"]
    page = client.get(reverse("courses:home"))
    assert "X-Frame-Options" not in page
    assert page["Content-Security-Policy"] == "frame-ancestors 'self' https://canvas.uni.edu https://moodle.uni.edu"
    # staff pages are never framed: an LMS page's author could make an instructor click through them
    client.force_login(cast["ines"])
    for staff_page in (reverse("courses:roster", args=[cast["course"].slug]), reverse("catalog:uploads")):
        answer = client.get(staff_page)
        assert answer["X-Frame-Options"] == "DENY" and "Content-Security-Policy" not in answer


def test_a_launch_the_roster_cannot_take_is_refused(linked, lms):
    client = Client()
    answer, _, _ = launch(client, lms, sub="u-anon", roles=[ROLE + "Learner"], email="")  # Canvas privacy: anonymous
    assert answer.status_code == 403
    assert "the portal's roster refused your LMS account (no email address)" in answer.content.decode().replace(
        "&#x27;", "'"
    )
    answer, _, _ = launch(client, lms, sub="u-mentor", roles=[ROLE + "Mentor"], email="mo@uni.edu")
    assert answer.status_code == 403 and b"is not one the portal knows" in answer.content
    assert logged_in(client) is None and not LtiUser.objects.filter(sub__in=["u-anon", "u-mentor"]).exists()
