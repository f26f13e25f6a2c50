from django.contrib import admin

from portal.catalog.models import Lab, LabVersion


class LabVersionInline(admin.TabularInline):
    model = LabVersion
    extra = 0
    readonly_fields = ("version", "content_hash", "synced_at")


@admin.register(Lab)
class LabAdmin(admin.ModelAdmin):
    list_display = ("slug", "title", "version", "resource_class", "metric_direction", "is_available", "synced_at")
    list_filter = ("resource_class", "is_available")
    search_fields = ("slug", "title")
    readonly_fields = ("content_hash", "synced_at")
    inlines = [LabVersionInline]


@admin.register(LabVersion)
class LabVersionAdmin(admin.ModelAdmin):
    list_display = ("lab", "version", "content_hash", "synced_at")
