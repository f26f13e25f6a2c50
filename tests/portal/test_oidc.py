"""Single sign-on (issue 12) against an OpenID Connect provider that the test plays itself on
127.0.0.1: a discovery document, JWKS, token and userinfo endpoints, served over HTTP from a thread.
The portal's side is all real: Django's test client is the browser, the library's views and our
backend run as in production and call the provider over the loopback network.

URLs: portal/urls.py adds the oidc/ routes only when settings say single sign-on is on at start-up,
and the suite starts with it off; so these tests use this module as the URL conf: the portal's
patterns plus the same ``oidc_urlpatterns()`` that portal/urls.py adds (a subprocess test below
checks that portal/urls.py and portal/settings.py do turn it on from the environment).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from portal.accounts import oidc
from portal.accounts.models import OidcIdentity
from portal.accounts.oidc import oidc_urlpatterns
from portal.urls import urlpatterns as portal_urlpatterns
from tests.conftest import PASSWORD
from tests.factories import UserFactory

urlpatterns = [*portal_urlpatterns, *([] if django_settings.OIDC_ENABLED else oidc_urlpatterns())]

CLIENT_ID = "aisys-portal"
CLIENT_SECRET = "s3cret-for-tests"
PROVIDER_NAME = "University login"
REPO = Path(__file__).resolve().parents[2]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class LoopbackProvider:
    """An OpenID Connect provider on 127.0.0.1, as the test scripts it: ``authorize`` stands for the
    person logging in at the provider and returns the code the browser brings back; the token
    endpoint checks the client's secret, redirect URI and PKCE verifier before answering with an ID
    token signed with RS256 (or with whatever a test asks, to see it refused)."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "provider-key-1"
        self.grants: dict[str, dict] = {}
        self.userinfo: dict[str, dict] = {}
        self.token_requests: list[dict[str, str]] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/.well-known/openid-configuration":
                    return self._json(200, provider.discovery())
                if self.path == "/jwks":
                    public = jwt.algorithms.RSAAlgorithm.to_jwk(provider.key.public_key(), as_dict=True)
                    return self._json(200, {"keys": [{**public, "kid": provider.kid, "alg": "RS256", "use": "sig"}]})
                if self.path == "/userinfo":
                    token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    if token not in provider.userinfo:
                        return self._json(401, {"error": "invalid_token"})
                    return self._json(200, provider.userinfo[token])
                return self._json(404, {"error": "not_found"})

            def do_POST(self):
                if self.path != "/token":
                    return self._json(404, {"error": "not_found"})
                form = {
                    k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()).items()
                }
                provider.token_requests.append(form)
                status, body = provider.token(form)
                return self._json(status, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def discovery(self) -> dict:
        return {
            "issuer": self.url,
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "userinfo_endpoint": f"{self.url}/userinfo",
            "jwks_uri": f"{self.url}/jwks",
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def authorize(self, params: dict[str, str], *, claims: dict, id_token: dict | None = None, signing_key=None) -> str:
        """The person logs in at the provider: ``claims`` are theirs (sub, email, ...); ``id_token``
        changes what the ID token says, ``signing_key`` what signs it."""
        code = uuid.uuid4().hex
        self.grants[code] = {
            "params": params,
            "claims": claims,
            "id_token": id_token or {},
            "signing_key": signing_key or self.key,
        }
        return code

    def token(self, form: dict[str, str]) -> tuple[int, dict]:
        grant = self.grants.pop(form.get("code", ""), None)
        if (
            grant is None
            or form.get("grant_type") != "authorization_code"
            or (form.get("client_id"), form.get("client_secret")) != (CLIENT_ID, CLIENT_SECRET)
            or form.get("redirect_uri") != grant["params"]["redirect_uri"]
            or _b64url(hashlib.sha256(form.get("code_verifier", "").encode()).digest())
            != grant["params"]["code_challenge"]
        ):
            return 400, {"error": "invalid_grant"}
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": grant["params"]["nonce"],
            **grant["claims"],
            **grant["id_token"],
        }
        access_token = uuid.uuid4().hex
        self.userinfo[access_token] = grant["claims"]
        id_token = jwt.encode(claims, grant["signing_key"], algorithm="RS256", headers={"kid": self.kid})
        return 200, {"access_token": access_token, "token_type": "Bearer", "expires_in": 300, "id_token": id_token}


@pytest.fixture(autouse=True)
def fresh_discovery():
    """The discovery documents read by earlier tests (kept per process, per address) are forgotten."""
    oidc._discovered.clear()
    yield
    oidc._discovered.clear()


@pytest.fixture
def provider():
    provider = LoopbackProvider()
    yield provider
    provider.close()


def configure_sso(settings, *, provider_url: str, discovery: bool = True) -> None:
    """What portal/settings.py makes of OIDC_RP_CLIENT_ID, OIDC_RP_CLIENT_SECRET, OIDC_PROVIDER_NAME
    and OIDC_OP_DISCOVERY_URL (or the four endpoints and OIDC_OP_ISSUER), the rest at their defaults;
    and this module as the URL conf, which has the oidc/ routes (the module's docstring says why)."""
    settings.ROOT_URLCONF = __name__
    settings.OIDC_ENABLED = True
    settings.AUTHENTICATION_BACKENDS = [
        "django.contrib.auth.backends.ModelBackend",
        "portal.accounts.oidc.PortalOidcBackend",
    ]
    settings.OIDC_PROVIDER_NAME = PROVIDER_NAME
    settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
    settings.OIDC_OP_DISCOVERY_URL = f"{provider_url}/.well-known/openid-configuration" if discovery else ""
    explicit = "" if discovery else provider_url
    settings.OIDC_OP_ISSUER = explicit
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = explicit and f"{provider_url}/authorize"
    settings.OIDC_OP_TOKEN_ENDPOINT = explicit and f"{provider_url}/token"
    settings.OIDC_OP_USER_ENDPOINT = explicit and f"{provider_url}/userinfo"
    settings.OIDC_OP_JWKS_ENDPOINT = explicit and f"{provider_url}/jwks"
    settings.OIDC_RP_SIGN_ALGO = "RS256"
    settings.OIDC_RP_SCOPES = "openid email profile"
    settings.OIDC_USE_PKCE = True
    settings.OIDC_CREATE_USERS = False
    settings.OIDC_TIMEOUT = 5


@pytest.fixture
def sso(settings, provider):
    configure_sso(settings, provider_url=provider.url)
    return provider


def sso_login(client: Client, provider: LoopbackProvider, *, claims: dict, **grant):
    """The browser's round trip: the button, the provider's login, back to the callback with the
    code and the state. Returns the callback's response."""
    start = client.get(reverse("oidc_authentication_init"))
    assert start.status_code == 302
    to = urlsplit(start.url)
    assert f"{to.scheme}://{to.netloc}{to.path}" == f"{provider.url}/authorize"
    params = {k: v[0] for k, v in parse_qs(to.query).items()}
    assert params["client_id"] == CLIENT_ID
    assert params["response_type"] == "code"
    assert params["scope"] == "openid email profile"
    assert params["redirect_uri"] == "http://testserver/oidc/callback/"
    assert params["state"] and params["nonce"] and params["code_challenge_method"] == "S256"
    code = provider.authorize(params, claims=claims, **grant)
    return client.get(reverse("oidc_authentication_callback"), {"code": code, "state": params["state"]})


def logged_in_as(client: Client) -> str | None:
    """The username of the session's user, as the pages show it, or None."""
    user_id = client.session.get("_auth_user_id")
    if user_id is None:
        return None
    page = client.get(reverse("courses:home"))
    assert page.status_code == 200
    username = User.objects.get(pk=user_id).username
    assert f"Log out {username}" in page.content.decode()
    return username


def refusal_on_login_page(client: Client, response) -> str:
    assert response.status_code == 302 and response.url == reverse("accounts:login")
    page = client.get(response.url)
    return page.content.decode()


@pytest.mark.parametrize("configured_by", ["discovery", "endpoints"])
def test_a_roster_student_logs_in_by_email_and_the_subject_is_recorded(settings, provider, cast, configured_by):
    configure_sso(settings, provider_url=provider.url, discovery=configured_by == "discovery")
    alice = cast["alice"]
    client = Client()

    response = sso_login(
        client, provider, claims={"sub": "u-1001", "email": "Alice@Example.EDU", "email_verified": True}
    )

    assert response.status_code == 302 and response.url == reverse("courses:home")
    assert client.session["_auth_user_id"] == str(alice.pk)
    assert logged_in_as(client) == "alice"
    # The backend traded the code at the provider's token endpoint with the secret and the PKCE verifier.
    (token_request,) = provider.token_requests
    assert token_request["client_secret"] == CLIENT_SECRET and len(token_request["code_verifier"]) >= 43
    identity = OidcIdentity.objects.get(user=alice)
    assert (identity.issuer, identity.sub) == (provider.url, "u-1001")


def test_the_login_page_offers_the_provider_beside_the_password_form(client, sso, cast):
    page = client.get(reverse("accounts:login")).content.decode()
    assert f"Sign in with {PROVIDER_NAME}" in page
    assert 'action="/oidc/authenticate/"' in page
    assert 'name="password"' in page
    # The password still works alongside (admins, invited accounts).
    client.post(reverse("accounts:login"), {"username": "alice", "password": PASSWORD})
    assert client.session["_auth_user_id"] == str(cast["alice"].pk)


def test_without_sso_the_login_page_has_no_provider_button(client, db):
    page = client.get(reverse("accounts:login")).content.decode()
    assert "Sign in with" not in page and 'name="password"' in page


def test_an_unknown_email_is_refused_and_no_account_is_made(client, sso, cast):
    accounts = User.objects.count()

    response = sso_login(client, sso, claims={"sub": "u-2", "email": "nobody@example.edu", "email_verified": True})

    page = refusal_on_login_page(client, response)
    assert "No account for nobody@example.edu: ask your instructor to add you to the course roster." in page
    assert "_auth_user_id" not in client.session
    assert User.objects.count() == accounts and not OidcIdentity.objects.exists()


def test_with_create_users_an_unknown_email_gets_a_new_account(client, sso, cast, settings):
    settings.OIDC_CREATE_USERS = True
    UserFactory(username="nora")  # the name the address suggests is taken

    response = sso_login(
        client,
        sso,
        claims={
            "sub": "u-3",
            "email": "nora@example.org",
            "email_verified": True,
            "given_name": "Nora",
            "family_name": "N",
        },
    )

    assert response.status_code == 302 and response.url == reverse("courses:home")
    user = User.objects.get(email="nora@example.org")
    assert (user.username, user.first_name, user.has_usable_password()) == ("nora2", "Nora", False)
    assert logged_in_as(client) == "nora2"
    assert OidcIdentity.objects.get(user=user).sub == "u-3"


def test_an_id_token_signed_with_another_key_is_refused(client, sso, cast):
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    response = sso_login(
        client, sso, claims={"sub": "u-1", "email": "alice@example.edu", "email_verified": True}, signing_key=forger
    )

    page = refusal_on_login_page(client, response)
    assert f"{PROVIDER_NAME}&#x27;s answer could not be verified, so you are not logged in" in page
    assert "_auth_user_id" not in client.session and not OidcIdentity.objects.exists()


def test_an_id_token_for_another_audience_is_refused(client, sso, cast):
    response = sso_login(
        client,
        sso,
        claims={"sub": "u-1", "email": "alice@example.edu", "email_verified": True},
        id_token={"aud": "some-other-app"},
    )

    page = refusal_on_login_page(client, response)
    assert "it was issued to another application" in page
    assert "_auth_user_id" not in client.session and not OidcIdentity.objects.exists()


def test_an_id_token_from_another_issuer_is_refused(client, sso, cast):
    response = sso_login(
        client,
        sso,
        claims={"sub": "u-1", "email": "alice@example.edu", "email_verified": True},
        id_token={"iss": "https://evil.example"},
    )

    assert "it was issued by another provider" in refusal_on_login_page(client, response)
    assert "_auth_user_id" not in client.session


def test_an_expired_id_token_is_refused(client, sso, cast):
    response = sso_login(
        client,
        sso,
        claims={"sub": "u-1", "email": "alice@example.edu", "email_verified": True},
        id_token={"exp": int(time.time()) - 60},
    )

    assert "could not be verified, so you are not logged in" in refusal_on_login_page(client, response)
    assert "_auth_user_id" not in client.session


def test_userinfo_about_another_subject_than_the_id_token_is_refused(client, sso, cast):
    response = sso_login(
        client,
        sso,
        claims={"sub": "u-1", "email": "alice@example.edu", "email_verified": True},
        id_token={"sub": "u-2"},
    )

    assert "its userinfo is about someone else than its ID token" in refusal_on_login_page(client, response)
    assert "_auth_user_id" not in client.session and not OidcIdentity.objects.exists()


def test_an_unverified_email_is_refused(client, sso, cast):
    response = sso_login(client, sso, claims={"sub": "u-1", "email": "alice@example.edu", "email_verified": False})

    assert "your email address alice@example.edu is not verified" in refusal_on_login_page(client, response)
    assert "_auth_user_id" not in client.session


def test_an_admin_account_is_never_matched_by_email(client, sso, cast):
    User.objects.create_superuser("root", "root@example.edu", PASSWORD)
    response = sso_login(client, sso, claims={"sub": "u-root", "email": "ROOT@example.edu"})  # no email_verified

    page = html.unescape(refusal_on_login_page(client, response))
    assert "The account for ROOT@example.edu is an admin account, which a first login does not match by email" in page
    assert "_auth_user_id" not in client.session and not OidcIdentity.objects.exists()


def test_the_provider_s_error_description_is_not_shown(client, sso, cast, caplog):
    caplog.set_level(logging.INFO, logger="portal.accounts.oidc")
    response = client.get(
        reverse("oidc_authentication_callback"),
        {"error": "access_denied", "error_description": "Call 0800-SCAM to unlock your account"},
    )
    page = refusal_on_login_page(client, response)
    assert f"{PROVIDER_NAME} did not log you in (access_denied): try again." in html.unescape(page)
    assert "0800-SCAM" not in page and "0800-SCAM" in caplog.text


def test_a_changed_email_at_the_provider_still_logs_in_the_same_account(sso, cast):
    alice = cast["alice"]
    sso_login(Client(), sso, claims={"sub": "u-1001", "email": "alice@example.edu", "email_verified": True})

    client = Client()
    response = sso_login(
        client, sso, claims={"sub": "u-1001", "email": "a.smith@alumni.example", "email_verified": True}
    )

    assert response.status_code == 302 and client.session["_auth_user_id"] == str(alice.pk)
    assert logged_in_as(client) == "alice"
    assert OidcIdentity.objects.filter(user=alice).count() == 1


def test_an_address_that_is_now_another_accounts_logs_in_the_subjects_account_not_that_one(sso, cast):
    sso_login(Client(), sso, claims={"sub": "u-1001", "email": "alice@example.edu", "email_verified": True})

    client = Client()
    sso_login(client, sso, claims={"sub": "u-1001", "email": "bob@example.edu", "email_verified": True})

    assert logged_in_as(client) == "alice"


def test_a_second_provider_account_claiming_a_linked_account_is_refused(sso, cast):
    alice = cast["alice"]
    sso_login(Client(), sso, claims={"sub": "u-1001", "email": "alice@example.edu", "email_verified": True})

    client = Client()
    response = sso_login(client, sso, claims={"sub": "u-6666", "email": "alice@example.edu", "email_verified": True})

    page = refusal_on_login_page(client, response)
    assert f"The account for alice@example.edu is already linked to a different {PROVIDER_NAME} account" in page
    assert "_auth_user_id" not in client.session
    assert list(OidcIdentity.objects.values_list("user", "sub")) == [(alice.pk, "u-1001")]


def test_two_accounts_with_the_email_are_refused_never_picked(client, sso, cast, caplog):
    UserFactory(username="alice_old", email="ALICE@example.edu")

    response = sso_login(client, sso, claims={"sub": "u-1", "email": "alice@example.edu", "email_verified": True})

    page = refusal_on_login_page(client, response)
    assert "More than one account has the email address alice@example.edu" in page
    assert "ask an admin to give each account its own address" in page
    assert "_auth_user_id" not in client.session and not OidcIdentity.objects.exists()
    assert "alice, alice_old" in caplog.text  # the admin finds the accounts in the log


def test_an_inactive_account_is_refused_and_logged_out(sso, cast):
    alice = cast["alice"]
    client = Client()
    sso_login(client, sso, claims={"sub": "u-1001", "email": "alice@example.edu", "email_verified": True})
    assert logged_in_as(client) == "alice"

    User.objects.filter(pk=alice.pk).update(is_active=False)
    assert client.get(reverse("courses:home")).status_code == 302  # its session ends
    again = Client()
    response = sso_login(again, sso, claims={"sub": "u-1001", "email": "alice@example.edu", "email_verified": True})

    assert "The account alice is disabled" in refusal_on_login_page(again, response)
    assert "_auth_user_id" not in again.session


def test_a_state_is_used_once(client, sso, cast):
    start = client.get(reverse("oidc_authentication_init"))
    params = {k: v[0] for k, v in parse_qs(urlsplit(start.url).query).items()}
    code = sso.authorize(params, claims={"sub": "u-1001", "email": "alice@example.edu", "email_verified": True})
    sso.grants["replayed"] = sso.grants[code]

    first = client.get(reverse("oidc_authentication_callback"), {"code": code, "state": params["state"]})
    assert first.status_code == 302 and first.url == reverse("courses:home")
    # The state is used up: coming back with it again is refused, in this browser or another.
    again = client.get(reverse("oidc_authentication_callback"), {"code": "replayed", "state": params["state"]})
    elsewhere = Client().get(reverse("oidc_authentication_callback"), {"code": "replayed", "state": params["state"]})

    assert again.status_code == 400
    assert elsewhere.status_code == 302 and elsewhere.url == reverse("accounts:login")
    assert len(sso.token_requests) == 1  # neither reached the provider


def test_a_provider_that_cannot_be_reached_says_so_on_the_login_page(client, settings, provider, db, caplog):
    configure_sso(settings, provider_url=provider.url)
    settings.OIDC_OP_DISCOVERY_URL = f"{provider.url}/missing/.well-known/openid-configuration"  # answers 404

    response = client.get(reverse("oidc_authentication_init"))

    page = refusal_on_login_page(client, response)
    assert f"{PROVIDER_NAME} cannot be reached right now: try again later, or log in with a password." in page
    assert f"OIDC_OP_DISCOVERY_URL {settings.OIDC_OP_DISCOVERY_URL} could not be read" in caplog.text


def _settings_in_a_fresh_process(env: dict[str, str]) -> subprocess.CompletedProcess:
    script = (
        "import json, django\n"
        "django.setup()\n"
        "from django.conf import settings\n"
        "from django.urls import NoReverseMatch, reverse\n"
        "def url(name):\n"
        "    try:\n"
        "        return reverse(name)\n"
        "    except NoReverseMatch:\n"
        "        return None\n"
        "print(json.dumps({'backends': settings.AUTHENTICATION_BACKENDS,\n"
        "    'app': 'mozilla_django_oidc' in settings.INSTALLED_APPS,\n"
        "    'callback': url('oidc_authentication_callback'), 'init': url('oidc_authentication_init'),\n"
        "    'algo': getattr(settings, 'OIDC_RP_SIGN_ALGO', None),\n"
        "    'scopes': getattr(settings, 'OIDC_RP_SCOPES', None),\n"
        "    'name': settings.OIDC_PROVIDER_NAME, 'create': getattr(settings, 'OIDC_CREATE_USERS', None)}))\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("OIDC_")}
    return subprocess.run(
        [sys.executable, "-c", script],
        env={**base, "DJANGO_SETTINGS_MODULE": "portal.settings", **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_settings_turn_sso_on_only_when_a_client_id_is_set():
    off = _settings_in_a_fresh_process({})
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout.splitlines()[-1]) == {
        "backends": ["django.contrib.auth.backends.ModelBackend"],
        "app": False,
        "callback": None,
        "init": None,
        "algo": None,
        "scopes": None,
        "name": "single sign-on",
        "create": None,
    }

    on = _settings_in_a_fresh_process(
        {
            "OIDC_RP_CLIENT_ID": CLIENT_ID,
            "OIDC_RP_CLIENT_SECRET": CLIENT_SECRET,
            "OIDC_OP_DISCOVERY_URL": "https://login.example.edu/.well-known/openid-configuration",
            "OIDC_PROVIDER_NAME": PROVIDER_NAME,
        }
    )
    assert on.returncode == 0, on.stderr
    assert json.loads(on.stdout.splitlines()[-1]) == {
        "backends": ["django.contrib.auth.backends.ModelBackend", "portal.accounts.oidc.PortalOidcBackend"],
        "app": True,
        "callback": "/oidc/callback/",
        "init": "/oidc/authenticate/",
        "algo": "RS256",
        "scopes": "openid email profile",
        "name": PROVIDER_NAME,
        "create": False,
    }

    half = _settings_in_a_fresh_process(
        {"OIDC_RP_CLIENT_ID": CLIENT_ID, "OIDC_OP_TOKEN_ENDPOINT": "https://login.example.edu/token"}
    )
    assert half.returncode != 0
    assert "set OIDC_OP_DISCOVERY_URL" in half.stderr
    assert "OIDC_OP_ISSUER, OIDC_OP_AUTHORIZATION_ENDPOINT, OIDC_OP_USER_ENDPOINT, OIDC_OP_JWKS_ENDPOINT" in half.stderr
