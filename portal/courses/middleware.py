"""Show and read times in the course's time zone on every page of a course."""

from __future__ import annotations

import zoneinfo

from django.utils import timezone

from portal.courses.models import Course


class CourseTimeZoneMiddleware:
    """A page whose address names a course (``course_slug``) renders, and its forms read, times in
    that course's time zone; other pages use the site's (TIME_ZONE)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()

    def process_view(self, request, view_func, view_args, view_kwargs):
        slug = view_kwargs.get("course_slug")
        name = Course.objects.filter(slug=slug).values_list("time_zone", flat=True).first() if slug else None
        if name:
            try:
                timezone.activate(zoneinfo.ZoneInfo(name))
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                timezone.deactivate()  # validated on save; a zone the system lost falls back to the site's
        return None
