from dataclasses import asdict

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, render

from portal.access import is_course_staff, section_scope
from portal.analytics.selectors import TOP_FAILING_TESTS, analytics_for_assignment
from portal.courses.models import Course
from portal.courses.selectors import student_sections


@login_required
def assignment_analytics(request, course_slug: str, assignment_slug: str):
    """An assignment's score histogram, submissions per hour, failing tests and metric, for its
    course's staff (a section-scoped TA: over their section's students only); 404 for anyone else."""
    course = get_object_or_404(Course, slug=course_slug, is_active=True)
    if not is_course_staff(course=course, user=request.user):
        raise Http404("No such course, or this page is not for you.")
    assignment = get_object_or_404(course.assignments.select_related("lab", "course"), slug=assignment_slug)
    scope = section_scope(course=course, user=request.user)
    section = scope or request.GET.get("section") or None
    analytics = analytics_for_assignment(assignment=assignment, section=section)
    m = analytics.metric
    return render(
        request,
        "analytics/assignment.html",
        {
            "course": course,
            "assignment": assignment,
            "analytics": analytics,
            "chart_data": asdict(analytics),
            # the table lists the hours with submissions; the chart draws every hour
            "hourly_rows": [(h, n) for h, n in zip(analytics.hourly.labels, analytics.hourly.counts, strict=True) if n],
            "top_tests": TOP_FAILING_TESTS,
            "metric_stats": {
                name: f"{value:.4g}" if value is not None else ""
                for name, value in (("p10", m.p10), ("median", m.median), ("p90", m.p90))
            },
            "section": section,
            "sections": [scope] if scope else student_sections(course=course),
        },
    )
