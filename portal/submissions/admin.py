from django.contrib import admin

from portal.submissions.models import Job, JobEvent, Submission, SubmissionFile


class SubmissionFileInline(admin.TabularInline):
    model = SubmissionFile
    extra = 0
    readonly_fields = ("name", "size", "content")


class JobInline(admin.TabularInline):
    model = Job
    extra = 0
    fields = ("attempt", "state", "score", "metric", "reason", "worker", "created_at", "finished_at")
    readonly_fields = fields
    show_change_link = True


@admin.register(Submission)
class SubmissionAdmin(admin.ModelAdmin):
    list_display = ("pk", "student", "assignment", "source", "is_late", "created_at")
    list_filter = ("assignment__course", "source", "is_late")
    search_fields = ("student__username",)
    inlines = [SubmissionFileInline, JobInline]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("pk", "submission", "attempt", "state", "score", "metric", "worker", "created_at")
    list_filter = ("state", "resource_class")
    readonly_fields = ("seed",)


@admin.register(JobEvent)
class JobEventAdmin(admin.ModelAdmin):
    list_display = ("job", "seq", "type", "ts")
    list_filter = ("type",)
