from django.contrib import admin

from portal.courses.models import Assignment, Course, Enrollment


class EnrollmentInline(admin.TabularInline):
    model = Enrollment
    extra = 0
    autocomplete_fields = ("user",)


class AssignmentInline(admin.TabularInline):
    model = Assignment
    extra = 0


@admin.register(Course)
class CourseAdmin(admin.ModelAdmin):
    list_display = ("slug", "title", "is_active", "created_at")
    search_fields = ("slug", "title")
    prepopulated_fields = {"slug": ("title",)}
    inlines = [AssignmentInline, EnrollmentInline]


@admin.register(Enrollment)
class EnrollmentAdmin(admin.ModelAdmin):
    list_display = ("user", "course", "role", "section", "created_at")
    list_filter = ("course", "role", "section")
    search_fields = ("user__username", "user__email")


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ("title", "course", "lab", "opens_at", "due_at", "is_visible", "late_policy")
    list_filter = ("course", "is_visible")
