import json

from django.contrib import admin
from django.utils.html import format_html

from portal.lti.models import LtiContext, LtiGradePassback, LtiPlatform, LtiResourceLink, LtiUser


@admin.register(LtiPlatform)
class LtiPlatformAdmin(admin.ModelAdmin):
    """Where a site admin registers an LMS (docs/lti.md); the tool's key is made with the row."""

    list_display = ["name", "issuer", "client_id", "is_active", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "issuer", "client_id"]
    readonly_fields = ["tool_key_id", "tool_public_jwk_json"]
    fields = [
        "name",
        "issuer",
        "client_id",
        "deployment_ids",
        "auth_login_url",
        "auth_token_url",
        "auth_audience",
        "key_set_url",
        "is_active",
        "tool_key_id",
        "tool_public_jwk_json",
    ]

    @admin.display(description="The tool's public key (also at /lti/jwks/)")
    def tool_public_jwk_json(self, platform: LtiPlatform) -> str:
        if platform.pk is None:
            return "made when the platform is saved"
        return format_html("<pre>{}</pre>", json.dumps(platform.tool_public_jwk, indent=2))

    @admin.display(description="The tool's key id (kid)")
    def tool_key_id(self, platform: LtiPlatform) -> str:
        return platform.tool_key_id if platform.pk else "made when the platform is saved"


@admin.register(LtiContext)
class LtiContextAdmin(admin.ModelAdmin):
    list_display = ["title", "context_id", "platform", "course", "updated_at"]
    list_filter = ["platform"]
    search_fields = ["title", "label", "context_id", "course__slug"]
    autocomplete_fields = ["course"]
    readonly_fields = ["memberships_url", "lineitems_url", "created_at", "updated_at"]


@admin.register(LtiResourceLink)
class LtiResourceLinkAdmin(admin.ModelAdmin):
    list_display = ["title", "resource_link_id", "context", "assignment", "linked_at"]
    list_filter = ["platform"]
    search_fields = ["title", "resource_link_id", "assignment__slug"]
    raw_id_fields = ["context", "assignment"]
    readonly_fields = ["lineitem_url", "lineitems_url", "ags_scopes", "created_at", "updated_at"]


@admin.register(LtiUser)
class LtiUserAdmin(admin.ModelAdmin):
    list_display = ["user", "sub", "platform", "created_at", "last_launch_at"]
    list_filter = ["platform"]
    search_fields = ["user__username", "user__email", "sub"]
    raw_id_fields = ["user"]


@admin.register(LtiGradePassback)
class LtiGradePassbackAdmin(admin.ModelAdmin):
    list_display = ["student", "resource_link", "score", "status", "attempts", "sent_at", "updated_at"]
    list_filter = ["status", "resource_link__platform"]
    search_fields = ["student__username", "resource_link__title"]
    readonly_fields = ["resource_link", "student", "score", "status", "attempts", "last_error", "sent_at"]
