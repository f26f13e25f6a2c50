"""Single sign-on with an OpenID Connect provider (mozilla-django-oidc), on where
``OIDC_RP_CLIENT_ID`` is set (portal/settings.py, docs/deployment.md).

Where the trust line runs: the browser brings back only a code and the state; the portal trades
the code for tokens with the provider itself, over HTTPS, with the client secret. The ID token is
trusted only once its signature checks against the provider's published keys (JWKS), and its
issuer, audience (this portal's client id), nonce (this browser's login) and expiry are ours;
the userinfo answer is trusted only for the same subject. Which account that is, is decided in
``portal.accounts.services.oidc_identity_resolve``: never from a claim alone but matched to a
roster account, by email on the first login and by the provider's subject id after it.

The library's backend reads the provider's endpoints from settings when it is built; here they
may come from the provider's discovery document, which is fetched at the first login and kept,
never when the backend is built, since Django builds one for every request of a logged-in user.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import jwt
import requests
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User
from django.core.exceptions import SuspiciousOperation
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from portal.accounts.services import OidcLoginRefused, oidc_identity_resolve

LOGGER = logging.getLogger(__name__)


class OidcProviderUnavailable(Exception):
    """The provider's discovery document could not be read: nobody can log in with it until it can."""


@dataclass(frozen=True)
class ProviderEndpoints:
    issuer: str  # empty: not configured, the ID token's own is recorded
    authorization: str
    token: str
    userinfo: str
    jwks: str


_discovered: dict[str, dict[str, Any]] = {}


def _discovery_document(url: str) -> dict[str, Any]:
    """The provider's /.well-known/openid-configuration, read once per process (a failure is not
    kept: the next login tries again)."""
    if url not in _discovered:
        try:
            response = requests.get(url, timeout=settings.OIDC_TIMEOUT)
            response.raise_for_status()
            document = response.json()
            if not isinstance(document, dict) or not document.get("authorization_endpoint"):
                raise ValueError("it is not an OpenID Connect discovery document (no authorization_endpoint)")
        except (requests.RequestException, ValueError) as exc:
            raise OidcProviderUnavailable(
                f"OIDC_OP_DISCOVERY_URL {url} could not be read ({exc}): check the address (it ends in "
                "/.well-known/openid-configuration) and that the web server can reach the provider, or set the "
                "endpoints explicitly (docs/deployment.md)"
            ) from exc
        _discovered[url] = document
    return _discovered[url]


def oidc_provider_endpoints() -> ProviderEndpoints:
    """The provider's endpoints: those set explicitly, else the discovery document's."""
    document = _discovery_document(settings.OIDC_OP_DISCOVERY_URL) if settings.OIDC_OP_DISCOVERY_URL else {}
    return ProviderEndpoints(
        issuer=settings.OIDC_OP_ISSUER or document.get("issuer", ""),
        authorization=settings.OIDC_OP_AUTHORIZATION_ENDPOINT or document.get("authorization_endpoint", ""),
        token=settings.OIDC_OP_TOKEN_ENDPOINT or document.get("token_endpoint", ""),
        userinfo=settings.OIDC_OP_USER_ENDPOINT or document.get("userinfo_endpoint", ""),
        jwks=settings.OIDC_OP_JWKS_ENDPOINT or document.get("jwks_uri", ""),
    )


def check_id_token_claims(*, payload: dict[str, Any], client_id: str, issuer: str, provider_name: str) -> None:
    """What the library leaves to us (it checks signature, expiry and nonce, not audience or issuer):
    the token must have been issued by our provider to this portal, with the claims OIDC requires."""
    unverifiable = f"{provider_name}'s answer could not be verified, so you are not logged in: "
    for claim in ("iss", "sub", "aud", "exp", "iat"):
        if not payload.get(claim):
            raise OidcLoginRefused(unverifiable + f"its ID token has no '{claim}'. Tell an admin.")
    audience = payload["aud"] if isinstance(payload["aud"], list) else [payload["aud"]]
    if client_id not in audience or (len(audience) > 1 and payload.get("azp", client_id) != client_id):
        LOGGER.warning("single sign-on refused: ID token for audience %s, not for %s", audience, client_id)
        raise OidcLoginRefused(unverifiable + "it was issued to another application. Tell an admin.")
    if issuer and payload["iss"] != issuer:
        LOGGER.warning("single sign-on refused: ID token issued by %s, not by %s", payload["iss"], issuer)
        raise OidcLoginRefused(unverifiable + "it was issued by another provider. Tell an admin.")


def _note_refusal(request: HttpRequest, message: str) -> None:
    # Read by OidcCallbackView.login_failure, which puts it on the login page.
    request.oidc_refusal = message


class PortalOidcBackend(OIDCAuthenticationBackend):
    """Logs in the roster account that a provider's login is (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Not the library's __init__: it requires the endpoints in settings, and Django builds a backend
        # for every request of a logged-in user; the endpoints are resolved in ``authenticate`` instead.
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.OIDC_RP_CLIENT_SECRET
        self.OIDC_RP_SIGN_ALGO = settings.OIDC_RP_SIGN_ALGO
        self.OIDC_RP_IDP_SIGN_KEY = None
        self.UserModel = User

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> User | None:
        if request is None or "password" in kwargs or not (request.GET.get("code") and request.GET.get("state")):
            return None  # a username and password, or no provider's answer: not ours
        name = settings.OIDC_PROVIDER_NAME
        try:
            endpoints = oidc_provider_endpoints()
            self.OIDC_OP_TOKEN_ENDPOINT = endpoints.token
            self.OIDC_OP_USER_ENDPOINT = endpoints.userinfo
            self.OIDC_OP_JWKS_ENDPOINT = endpoints.jwks
            self.expected_issuer = endpoints.issuer
            return super().authenticate(request, **kwargs)
        except OidcLoginRefused as refusal:
            _note_refusal(request, str(refusal))
        except OidcProviderUnavailable as exc:
            LOGGER.error("single sign-on unavailable: %s", exc)
            _note_refusal(request, f"{name} cannot be reached right now: try again later, or log in with a password.")
        except (SuspiciousOperation, jwt.InvalidTokenError, jwt.PyJWKError, requests.RequestException, KeyError) as exc:
            # A bad signature, an expired token, a refused code, an unreadable answer (KeyError: a JWKS or
            # token header without the fields the library reads): logged for the admin.
            LOGGER.warning("single sign-on refused: %s: %s", type(exc).__name__, exc)
            _note_refusal(
                request,
                f"{name}'s answer could not be verified, so you are not logged in: try again, and tell an admin "
                "if it happens again (the portal's log says why).",
            )
        return None

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> User:
        """``payload`` is the ID token's claims, its signature and nonce checked by the library."""
        name = settings.OIDC_PROVIDER_NAME
        check_id_token_claims(
            payload=payload, client_id=self.OIDC_RP_CLIENT_ID, issuer=self.expected_issuer, provider_name=name
        )
        userinfo = self.get_userinfo(access_token, id_token, payload)
        if userinfo.get("sub") != payload["sub"]:  # OIDC Core 5.3.2: else its claims must not be used
            LOGGER.warning(
                "single sign-on refused: userinfo for %r, ID token for %r", userinfo.get("sub"), payload["sub"]
            )
            raise OidcLoginRefused(
                f"{name}'s answer could not be verified, so you are not logged in: its userinfo is about someone "
                "else than its ID token. Tell an admin."
            )
        claims = {**payload, **userinfo}
        return oidc_identity_resolve(
            issuer=payload["iss"],
            sub=str(payload["sub"]),
            email=claims.get("email"),
            email_verified=claims.get("email_verified"),
            first_name=claims.get("given_name") or "",
            last_name=claims.get("family_name") or "",
            provider_name=name,
            create_users=settings.OIDC_CREATE_USERS,
        )

    def get_user(self, user_id: int) -> User | None:
        # Django's (inactive accounts are logged out), not the library's (which keeps them in).
        return ModelBackend.get_user(self, user_id)


class OidcAuthenticateView(OIDCAuthenticationRequestView):
    """The "Sign in with ..." button: off to the provider's authorization endpoint."""

    def get(self, request: HttpRequest) -> HttpResponse:
        try:
            self.OIDC_OP_AUTH_ENDPOINT = oidc_provider_endpoints().authorization
        except OidcProviderUnavailable as exc:
            LOGGER.error("single sign-on unavailable: %s", exc)
            name = settings.OIDC_PROVIDER_NAME
            messages.error(request, f"{name} cannot be reached right now: try again later, or log in with a password.")
            return HttpResponseRedirect(reverse("accounts:login"))
        return super().get(request)


class OidcCallbackView(OIDCAuthenticationCallbackView):
    """Where the provider sends the browser back; a refused login lands on the login page saying why."""

    @property
    def failure_url(self) -> str:
        return reverse("accounts:login")

    def login_failure(self) -> HttpResponse:
        request = self.request
        message = getattr(request, "oidc_refusal", "")
        if not message and request.GET.get("error"):
            # the OAuth error code only: the description is anyone's text (a crafted link), so it is logged
            error = re.sub(r"[^a-z_]", "", request.GET["error"][:40])
            LOGGER.info("single sign-on: provider error %s: %s", error, request.GET.get("error_description", "")[:300])
            message = f"{settings.OIDC_PROVIDER_NAME} did not log you in ({error or 'an error'}): try again."
        elif not message:
            message = f"That {settings.OIDC_PROVIDER_NAME} login has expired or was not started here: try again."
        messages.error(request, message)
        return super().login_failure()


def oidc_urlpatterns() -> list[URLPattern]:
    """The library's routes, with the names it reverses, under oidc/ (portal/urls.py includes them
    only where single sign-on is configured). No oidc/logout/: the portal's own logout serves."""
    return [
        path("oidc/authenticate/", OidcAuthenticateView.as_view(), name="oidc_authentication_init"),
        path("oidc/callback/", OidcCallbackView.as_view(), name="oidc_authentication_callback"),
    ]
