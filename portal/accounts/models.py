from django.conf import settings
from django.db import models


class OidcIdentity(models.Model):
    """An account's identity at a single sign-on provider: the provider's issuer and its stable
    subject id (``sub``), recorded on the account's first OIDC login (matched by email then) and
    matched first on every later login, so that an email address changed or reassigned at the
    provider neither locks the student out nor logs them in as someone else (docs/security.md)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="oidc_identities")
    issuer = models.CharField(max_length=255)
    sub = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    last_login_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["issuer", "sub"], name="oidc_identity_unique_subject"),
            # One provider account per portal account: a second one claiming the same account is refused.
            models.UniqueConstraint(fields=["user", "issuer"], name="oidc_identity_one_per_issuer"),
        ]
        verbose_name = "OIDC identity"
        verbose_name_plural = "OIDC identities"

    def __str__(self) -> str:
        return f"{self.user} = {self.sub} at {self.issuer}"
