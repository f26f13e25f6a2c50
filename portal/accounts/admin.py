from django.contrib import admin

from portal.accounts.models import OidcIdentity

# Users themselves are managed by django.contrib.auth's admin.


@admin.register(OidcIdentity)
class OidcIdentityAdmin(admin.ModelAdmin):
    """Single sign-on links: deleting one lets the account be matched by email again at its next
    provider login (e.g. a student's provider account was re-created)."""

    list_display = ("user", "issuer", "sub", "created_at", "last_login_at")
    search_fields = ("user__username", "user__email", "sub")
    list_filter = ("issuer",)
    raw_id_fields = ("user",)
    readonly_fields = ("created_at", "last_login_at")
