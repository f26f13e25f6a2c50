"""LTI 1.3: the platforms (LMSs) registered with the portal, and what their launches map to.

A platform is registered once by a site admin (Django admin). Its contexts (LMS courses) and
resource links (LMS assignments or links) are recorded at their first launch and linked by an
instructor or admin to a portal course and assignment; its users are recorded by the LMS's own
id (``sub``) at their first launch or roster sync. docs/lti.md says how each LMS names the fields.
"""

from __future__ import annotations

import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings
from django.db import models
from jwcrypto.jwk import JWK


def new_tool_private_key() -> str:
    """A fresh RSA key (PEM) with which the portal signs its requests to one platform."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


class LtiPlatform(models.Model):
    """An LMS (a Canvas or Moodle site) that launches into the portal, as registered in it.

    The tool's own key is generated when the row is made and never leaves the portal; its public
    half is published at ``lti/jwks/`` under its key id (the RFC 7638 thumbprint), where the LMS
    reads it to check the portal's service requests (roster sync, grade passback)."""

    name = models.CharField(max_length=100, help_text="e.g. University Canvas")
    issuer = models.CharField(
        max_length=255,
        help_text="The LMS's issuer (iss): Canvas: https://canvas.instructure.com; Moodle: the site's URL",
    )
    client_id = models.CharField(
        max_length=255, help_text="The client id the LMS gave the tool (Canvas: the developer key's id)"
    )
    deployment_ids = models.TextField(
        blank=True, help_text="The deployment ids launches may come from, one per line (docs/lti.md)"
    )
    auth_login_url = models.URLField(
        "authentication request URL",
        max_length=500,
        help_text="The LMS's OIDC authorization endpoint (Canvas: https://sso.canvaslms.com/api/lti/authorize_redirect)",
    )
    auth_token_url = models.URLField(
        "access token URL",
        max_length=500,
        help_text="The LMS's OAuth2 token endpoint (Canvas: https://sso.canvaslms.com/login/oauth2/token)",
    )
    auth_audience = models.CharField(
        max_length=500, blank=True, help_text="Leave empty unless the LMS wants another audience than the token URL"
    )
    key_set_url = models.URLField(
        "public keyset URL",
        max_length=500,
        help_text="Where the LMS publishes its keys (JWKS) (Canvas: https://sso.canvaslms.com/api/lti/security/jwks)",
    )
    tool_private_key = models.TextField(default=new_tool_private_key, editable=False)
    is_active = models.BooleanField(default=True, help_text="Launches from an inactive platform are refused")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "LTI platform"
        constraints = [models.UniqueConstraint(fields=["issuer", "client_id"], name="lti_platform_unique_client")]

    def __str__(self) -> str:
        return f"{self.name} ({self.issuer}, client {self.client_id})"

    @property
    def deployment_id_list(self) -> list[str]:
        return [line.strip() for line in self.deployment_ids.splitlines() if line.strip()]

    @property
    def tool_public_key(self) -> str:
        key = serialization.load_pem_private_key(self.tool_private_key.encode(), password=None)
        return (
            key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    @property
    def tool_public_jwk(self) -> dict:
        """The public key as the tool's JWKS lists it; its ``kid`` is the key's thumbprint, which
        is also what pylti1p3 puts in the header of the tokens it signs with it."""
        jwk = JWK.from_pem(self.tool_public_key.encode())
        return {**json.loads(jwk.export_public()), "kid": jwk.thumbprint(), "alg": "RS256", "use": "sig"}

    @property
    def tool_key_id(self) -> str:
        return self.tool_public_jwk["kid"]


class LtiContext(models.Model):
    """An LMS course (the launch's ``context`` claim), linked once to a portal course."""

    platform = models.ForeignKey(LtiPlatform, on_delete=models.CASCADE, related_name="contexts")
    context_id = models.CharField(max_length=255)
    title = models.CharField(max_length=255, blank=True)
    label = models.CharField(max_length=255, blank=True)
    course = models.ForeignKey(
        "courses.Course", null=True, blank=True, on_delete=models.SET_NULL, related_name="lti_contexts"
    )
    memberships_url = models.URLField(
        max_length=500, blank=True, help_text="Names and Roles: the context_memberships_url of the latest launch"
    )
    lineitems_url = models.URLField(
        max_length=500, blank=True, help_text="Assignment and Grade Services: the lineitems URL of the latest launch"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["platform", "title"]
        verbose_name = "LTI context"
        constraints = [models.UniqueConstraint(fields=["platform", "context_id"], name="lti_context_unique")]

    def __str__(self) -> str:
        return f"{self.title or self.context_id} at {self.platform.name}"


class LtiResourceLink(models.Model):
    """A link in an LMS course that launches the portal, linked once to an assignment (or, with
    ``linked_at`` set and no assignment, to the course page). The Assignment and Grade Services
    endpoint of its latest launch says where its grades go."""

    platform = models.ForeignKey(LtiPlatform, on_delete=models.CASCADE, related_name="resource_links")
    context = models.ForeignKey(LtiContext, on_delete=models.CASCADE, related_name="resource_links")
    resource_link_id = models.CharField(max_length=255)
    title = models.CharField(max_length=255, blank=True)
    assignment = models.ForeignKey(
        "courses.Assignment", null=True, blank=True, on_delete=models.SET_NULL, related_name="lti_resource_links"
    )
    linked_at = models.DateTimeField(
        null=True, blank=True, help_text="When staff chose where it leads; empty: not chosen yet"
    )
    lineitem_url = models.URLField(max_length=500, blank=True, help_text="The line item its scores are posted to")
    lineitems_url = models.URLField(max_length=500, blank=True)
    ags_scopes = models.JSONField(default=list, blank=True, help_text="The AGS scopes the LMS granted")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["platform", "title"]
        verbose_name = "LTI resource link"
        constraints = [
            models.UniqueConstraint(fields=["platform", "resource_link_id"], name="lti_resource_link_unique")
        ]

    def __str__(self) -> str:
        return f"{self.title or self.resource_link_id} at {self.platform.name}"


class LtiUser(models.Model):
    """A portal account's identity at a platform: the LMS's stable user id (``sub``), recorded
    at the first launch or roster sync and matched first ever after (so a changed email address
    at the LMS neither locks the person out nor logs them in as someone else)."""

    platform = models.ForeignKey(LtiPlatform, on_delete=models.CASCADE, related_name="users")
    sub = models.CharField(max_length=255)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="lti_identities")
    created_at = models.DateTimeField(auto_now_add=True)
    last_launch_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "LTI user"
        constraints = [
            models.UniqueConstraint(fields=["platform", "sub"], name="lti_user_unique_sub"),
            models.UniqueConstraint(fields=["platform", "user"], name="lti_user_one_per_platform"),
        ]

    def __str__(self) -> str:
        return f"{self.user} = {self.sub} at {self.platform.name}"


class LtiNonce(models.Model):
    """A launch's nonce, once used: a second launch with it is a replay. Kept a day (a launch
    token lives minutes; an expired one is refused by its own ``exp``)."""

    platform = models.ForeignKey(LtiPlatform, on_delete=models.CASCADE, related_name="+")
    nonce = models.CharField(max_length=255)
    used_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["platform", "nonce"], name="lti_nonce_once")]

    def __str__(self) -> str:
        return f"{self.nonce} used {self.used_at:%Y-%m-%d %H:%M}"


class LtiGradePassback(models.Model):
    """The last score sent (or tried) for a student to a resource link's line item: what makes
    passing back idempotent, and where a failure is recorded for staff to see."""

    class Status(models.TextChoices):
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    resource_link = models.ForeignKey(LtiResourceLink, on_delete=models.CASCADE, related_name="passbacks")
    student = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    score = models.FloatField(null=True, blank=True, help_text="Sent or tried; empty: a cleared grade")
    status = models.CharField(max_length=10, choices=Status.choices)
    attempts = models.PositiveIntegerField(default=0, help_text="Failed tries since the last success")
    last_error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "LTI grade passback"
        constraints = [
            models.UniqueConstraint(fields=["resource_link", "student"], name="lti_passback_one_per_student")
        ]

    def __str__(self) -> str:
        return f"{self.student} on {self.resource_link}: {self.score} ({self.status})"
