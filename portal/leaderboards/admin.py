from django.contrib import admin

from portal.leaderboards.models import LeaderboardEntry


@admin.register(LeaderboardEntry)
class LeaderboardEntryAdmin(admin.ModelAdmin):
    list_display = ("assignment", "student", "score", "metric", "achieved_at")
    list_filter = ("assignment",)
