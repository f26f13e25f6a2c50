"""pylti1p3 wired to the portal: its tool configuration read from ``LtiPlatform`` rows, and the
HTTP session every call to an LMS goes through (with a timeout: pylti1p3 sets none).

Where the trust line runs: a launch's id_token is trusted only once pylti1p3 has checked the
state (this browser started the login), the nonce (issued to this browser's session), the
registration (issuer and client id = audience are registered and active), the signature (against
the keys the LMS publishes at its keyset URL, fetched over HTTP), the expiry and the deployment
id; ``portal.lti.launch`` adds what pylti1p3 leaves out (the nonce used once, a many-audience
token's ``azp``). Everything the portal asks of an LMS afterwards (memberships, scores) goes
with an OAuth2 token obtained with a JWT signed by the tool's own key of that platform.
"""

from __future__ import annotations

import requests
from django.conf import settings
from pylti1p3.deployment import Deployment
from pylti1p3.registration import Registration
from pylti1p3.service_connector import ServiceConnector
from pylti1p3.tool_config import ToolConfAbstract

from portal.lti.models import LtiPlatform


class _TimeoutSession(requests.Session):
    """A requests session whose calls give up after ``LTI_HTTP_TIMEOUT`` seconds."""

    def request(self, *args, **kwargs):
        kwargs.setdefault("timeout", settings.LTI_HTTP_TIMEOUT)
        return super().request(*args, **kwargs)


def lms_http_session() -> requests.Session:
    session = _TimeoutSession()
    session.headers["User-Agent"] = "AISys-Labs-LTI"
    return session


def registration_for(platform: LtiPlatform) -> Registration:
    return (
        Registration()
        .set_issuer(platform.issuer)
        .set_client_id(platform.client_id)
        .set_auth_login_url(platform.auth_login_url)
        .set_auth_token_url(platform.auth_token_url)
        .set_auth_audience(platform.auth_audience or None)
        .set_key_set_url(platform.key_set_url)
        .set_key_set(None)
        .set_tool_private_key(platform.tool_private_key)
        .set_tool_public_key(platform.tool_public_key)
    )


def service_connector(platform: LtiPlatform) -> ServiceConnector:
    """Calls the platform's services (NRPS, AGS) with a token it grants the tool's signed request."""
    return ServiceConnector(registration_for(platform), requests_session=lms_http_session())


def platform_for(*, issuer: str, client_id: str | None) -> LtiPlatform | None:
    """The active platform of (issuer, client id); without a client id (an LMS may leave it out
    of the login request), the issuer's only active platform."""
    platforms = LtiPlatform.objects.filter(issuer=issuer, is_active=True)
    if client_id:
        return platforms.filter(client_id=client_id).first()
    found = list(platforms[:2])
    return found[0] if len(found) == 1 else None


class PortalToolConf(ToolConfAbstract):
    """The registrations pylti1p3 asks for, from the database (each issuer may have many
    client ids: one per developer key or tool registration)."""

    def check_iss_has_one_client(self, iss: str) -> bool:
        return False

    def check_iss_has_many_clients(self, iss: str) -> bool:
        return True

    def find_registration_by_issuer(self, iss, *args, **kwargs):
        return None

    def find_registration_by_params(self, iss, client_id, *args, **kwargs):
        platform = platform_for(issuer=iss, client_id=client_id)
        return None if platform is None else registration_for(platform)

    def find_deployment(self, iss, deployment_id):
        return None

    def find_deployment_by_params(self, iss, deployment_id, client_id, *args, **kwargs):
        platform = platform_for(issuer=iss, client_id=client_id)
        if platform is None or deployment_id not in platform.deployment_id_list:
            return None
        return Deployment().set_deployment_id(deployment_id)

    def get_jwks(self, iss=None, client_id=None, **kwargs):
        return tool_jwks()


def tool_jwks() -> dict:
    """The tool's public keys, one per active platform (``lti/jwks/``)."""
    return {"keys": [platform.tool_public_jwk for platform in LtiPlatform.objects.filter(is_active=True)]}
