"""The two requests of an LTI 1.3 launch, as pylti1p3 handles them: the LMS's login initiation
(answered with a redirect to its authorization endpoint, carrying a state kept in a cookie and a
nonce kept in this browser's session) and the launch itself (the LMS's signed id_token, posted
back with the state). What the checks are and where the trust line runs: portal/lti/tool.py.

Inside an LMS's iframe the browser may refuse the portal's cookies (third-party cookies): the
login then answers a small page that tests for them first and, where they are blocked, offers to
open the launch in a new window, where they are first-party.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt
from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from pylti1p3.contrib.django import DjangoMessageLaunch, DjangoOIDCLogin
from pylti1p3.contrib.django.cookie import DjangoCookieService
from pylti1p3.contrib.django.request import DjangoRequest
from pylti1p3.exception import LtiException, OIDCException

from portal.lti.models import LtiNonce, LtiPlatform
from portal.lti.tool import PortalToolConf, lms_http_session, platform_for

LOGGER = logging.getLogger(__name__)

LTI = "https://purl.imsglobal.org/spec/lti/claim/"
AGS_ENDPOINT = "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"
NRPS_SERVICE = "https://purl.imsglobal.org/spec/lti-nrps/claim/namesroleservice"
RESOURCE_LINK_REQUEST = "LtiResourceLinkRequest"


class LaunchRefused(Exception):
    """A login or launch that logs nobody in; the message says what went wrong and who can fix it."""

    def __init__(self, message: str, *, status: int = 403):
        super().__init__(message)
        self.status = status


class _StateCookies(DjangoCookieService):
    """pylti1p3's state cookie, SameSite=None; Secure (so the LMS's cross-site POST of the launch
    brings it back) whenever the portal's own cookies are secure, not only when Django sees the
    request as HTTPS (behind a proxy that terminates TLS it may not)."""

    def update_response(self, response):
        secure = self._request.is_secure() or settings.SESSION_COOKIE_SECURE
        for key, cookie in self._cookie_data_to_set.items():
            response.set_cookie(
                key,
                cookie["value"],
                max_age=cookie["exp"],
                secure=secure,
                httponly=True,
                path="/",
                samesite="None" if secure else "Lax",
            )


def launch_url() -> str:
    """The redirect (launch) URL: the one registered in the LMS, so built from PORTAL_URL."""
    return settings.PORTAL_URL + reverse("lti:launch")


def login_initiation(request: HttpRequest) -> HttpResponse:
    """Answer an LMS's OIDC login initiation (GET or POST): to its authorization endpoint, after
    checking that this browser keeps the portal's cookies."""
    issuer = request.GET.get("iss") or request.POST.get("iss")
    client_id = request.GET.get("client_id") or request.POST.get("client_id")
    if not issuer or not (request.GET.get("login_hint") or request.POST.get("login_hint")):
        raise LaunchRefused(
            "This address starts a launch from an LMS and needs its iss and login_hint parameters: open the "
            "portal from your LMS course instead.",
            status=400,
        )
    if platform_for(issuer=issuer, client_id=client_id) is None:
        LOGGER.warning("LTI login refused: no active platform %s with client id %s", issuer, client_id)
        raise LaunchRefused(
            f"The LMS {issuer} (client id {client_id or 'not given'}) is not registered with this portal: a site "
            "admin registers it in Django admin, LTI platforms (docs/lti.md).",
            status=400,
        )
    wrapped = DjangoRequest(request)
    oidc = DjangoOIDCLogin(wrapped, PortalToolConf(), cookie_service=_StateCookies(wrapped))
    oidc.enable_check_cookies(
        main_msg="Your browser does not let the portal keep its cookies inside the LMS page.",
        click_msg="Open AISys Labs in a new window",
        loading_msg="Opening AISys Labs…",
    )
    try:
        return oidc.redirect(launch_url())
    except (OIDCException, LtiException) as exc:
        LOGGER.warning("LTI login refused: %s", exc)
        raise LaunchRefused(
            f"The LMS's login request could not be used ({exc}): launch again from the LMS.", status=400
        )


@dataclass(frozen=True)
class Launch:
    """A launch whose id_token passed every check: the platform it came from and its claims."""

    platform: LtiPlatform
    claims: dict[str, Any]

    def _claim(self, name: str) -> Any:
        return self.claims.get(LTI + name)

    @property
    def sub(self) -> str:
        return str(self.claims["sub"])

    @property
    def email(self) -> str:
        return (self.claims.get("email") or "").strip()

    @property
    def given_name(self) -> str:
        return (self.claims.get("given_name") or "").strip()

    @property
    def family_name(self) -> str:
        return (self.claims.get("family_name") or "").strip()

    @property
    def roles(self) -> list[str]:
        return [str(role) for role in (self._claim("roles") or [])]

    @property
    def context(self) -> dict[str, Any]:
        return self._claim("context") or {}

    @property
    def resource_link(self) -> dict[str, Any]:
        return self._claim("resource_link") or {}

    @property
    def ags(self) -> dict[str, Any]:
        return self.claims.get(AGS_ENDPOINT) or {}

    @property
    def memberships_url(self) -> str:
        return (self.claims.get(NRPS_SERVICE) or {}).get("context_memberships_url") or ""


CLOCK_LEEWAY_SECONDS = 60  # an LMS whose clock runs a little ahead still launches


class PortalMessageLaunch(DjangoMessageLaunch):
    """pylti1p3's launch, with a minute's leeway on the token's times (the library gives none: an
    LMS clock a second ahead makes its fresh token "not yet valid")."""

    def validate_jwt_signature(self):
        public_key, key_alg = self.get_public_key()
        try:
            jwt.decode(
                self._get_id_token(),
                public_key,
                algorithms=[key_alg],
                options=self._jwt_verify_options,
                leeway=CLOCK_LEEWAY_SECONDS,
            )
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError) as exc:
            raise LtiException(f"Token times: {exc}") from exc
        except jwt.InvalidTokenError as exc:
            raise LtiException(f"Can't decode id_token: {exc}") from exc
        return self


def _refusal_for(exc: Exception, *, issuer: str, client_id: str, key_set_url: str) -> LaunchRefused:
    text = str(exc)
    if text.startswith("Token times:"):
        return LaunchRefused(
            f"This launch's token has expired or is not valid yet ({text[13:]}): launch again from the LMS; if it "
            f"happens again, the clocks of {issuer} and of this portal disagree.",
            status=403,
        )
    if "State not found" in text or "Missing state" in text:
        return LaunchRefused(
            "This launch does not match a login started in this browser (its state is unknown or has expired). "
            "Launch again from the LMS; if it happens again, your browser is blocking the portal's cookies inside "
            "the LMS page: open the link in a new window.",
            status=400,
        )
    if "nonce" in text.lower():
        return LaunchRefused(
            "This launch's nonce was not issued to this browser, or was used already: launch again from the LMS.",
            status=403,
        )
    if "Registration not found" in text or "Client id not registered" in text or "not found in settings" in text:
        return LaunchRefused(
            f"This launch was issued by {issuer} for client id {client_id}, which is not registered with this "
            "portal: a site admin checks the platform's issuer and client id (Django admin, LTI platforms).",
            status=403,
        )
    if "public key" in text or "decode id_token" in text or "KID" in text or "fetch URL" in text:
        return LaunchRefused(
            f"This launch's signature could not be verified against the keys {issuer} publishes at {key_set_url} "
            f"({text}): launch again; if it happens again, a site admin checks the platform's keyset URL.",
            status=403,
        )
    if "deployment" in text:
        return LaunchRefused(
            f"This launch comes from a deployment of {issuer} that is not registered with this portal: a site admin "
            "adds its deployment id to the platform (Django admin, LTI platforms).",
            status=403,
        )
    return LaunchRefused(f"This launch could not be verified ({text}): launch again from the LMS.", status=403)


def launch_validate(request: HttpRequest) -> Launch:
    """The launch posted to ``lti/launch/``, checked; ``LaunchRefused`` if any check fails."""
    wrapped = DjangoRequest(request, post_only=True)
    message = PortalMessageLaunch(
        wrapped, PortalToolConf(), cookie_service=_StateCookies(wrapped), requests_session=lms_http_session()
    )
    try:
        claims = message.validate().get_launch_data()
    except (LtiException, OIDCException) as exc:
        body = message._jwt.get("body", {})  # as posted, for the message: unverified
        issuer, audience = str(body.get("iss", "?")), body.get("aud", "?")
        client_id = str(audience[0] if isinstance(audience, list) and audience else audience)
        platform = platform_for(issuer=issuer, client_id=client_id)
        LOGGER.warning("LTI launch refused (iss %s, aud %s): %s", issuer, audience, exc)
        raise _refusal_for(
            exc, issuer=issuer, client_id=client_id, key_set_url=platform.key_set_url if platform else "?"
        )
    platform = platform_for(issuer=claims["iss"], client_id=message.get_client_id())
    if platform is None:  # deactivated between the checks
        raise LaunchRefused(f"The LMS {claims['iss']} is no longer registered with this portal.", status=403)
    audience = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if len(audience) > 1 and claims.get("azp") != platform.client_id:
        LOGGER.warning("LTI launch refused: audience %s without azp %s", audience, platform.client_id)
        raise LaunchRefused(
            "This launch was issued to several applications and does not name this portal as its party (azp): "
            "it cannot be used here.",
            status=403,
        )
    _nonce_use(platform=platform, nonce=str(claims["nonce"]))
    request.session.pop(f"lti1p3-nonce-{claims['nonce']}", None)
    for key in [k for k in request.session.keys() if k.startswith("lti1p3-launch-")]:
        del request.session[key]  # pylti1p3 keeps the whole token there; the portal never reads it back
    message_type = claims.get(LTI + "message_type")
    if message_type != RESOURCE_LINK_REQUEST:
        raise LaunchRefused(
            f"The portal handles resource link launches only, not {message_type}: add it to the LMS as a link or "
            "an assignment (deep linking is not used; docs/lti.md).",
            status=400,
        )
    return Launch(platform=platform, claims=claims)


def _nonce_use(*, platform: LtiPlatform, nonce: str) -> None:
    """Each nonce launches once: pylti1p3 keeps it in the session, where a replayed token passes."""
    LtiNonce.objects.filter(used_at__lt=timezone.now() - timedelta(days=1)).delete()
    try:
        with transaction.atomic():
            LtiNonce.objects.create(platform=platform, nonce=nonce)
    except IntegrityError:
        LOGGER.warning("LTI launch refused: nonce %s of %s replayed", nonce, platform.issuer)
        raise LaunchRefused(
            "This launch was used already (its nonce is spent): launch again from the LMS.", status=403
        ) from None
