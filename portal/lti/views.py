"""LTI's pages. ``login``, ``launch`` and ``jwks`` are public by protocol (the LMS and the browser
it sends call them; what they trust is checked in portal/lti/launch.py); the others are for staff."""

from __future__ import annotations

import json

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login as auth_login
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portal.access import can_manage_course
from portal.courses.models import Course
from portal.lti.launch import LaunchRefused, launch_url, launch_validate, login_initiation
from portal.lti.models import LtiContext, LtiPlatform, LtiResourceLink
from portal.lti.services import (
    Destination,
    LmsUnavailable,
    LtiRefused,
    lti_context_link,
    lti_launch,
    lti_linkable_courses,
    lti_resource_link_link,
    lti_roster_sync,
)
from portal.lti.tool import tool_jwks

SCOPES = [
    "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem",
    "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem.readonly",
    "https://purl.imsglobal.org/spec/lti-ags/scope/result.readonly",
    "https://purl.imsglobal.org/spec/lti-ags/scope/score",
    "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly",
]


# The LMS courses this browser's user launched as an instructor but that were not linked yet: the proof,
# short of being a site admin, that they may link it (a context's number alone proves nothing).
CONTEXTS_TAUGHT = "lti-contexts-taught"


def _refused(request: HttpRequest, message: str, status: int) -> HttpResponse:
    return render(request, "lti/refused.html", {"message": message}, status=status)


@csrf_exempt  # the LMS posts it from its own site
@require_http_methods(["GET", "POST"])
def login(request):
    """OIDC login initiation: the LMS (GET or POST) -> the LMS's authorization endpoint."""
    try:
        return login_initiation(request)
    except LaunchRefused as exc:
        return _refused(request, str(exc), exc.status)


@csrf_exempt  # the LMS posts the id_token from its own site; the token's checks replace CSRF's
@require_POST
def launch(request):
    """The launch: a verified id_token logs its user in and goes to the assignment or course."""
    try:
        result = lti_launch(launch=launch_validate(request))
    except LaunchRefused as exc:
        return _refused(request, str(exc), exc.status)
    except LtiRefused as exc:
        return _refused(request, str(exc), 403)
    if result.user is not None:
        auth_login(request, result.user, backend="django.contrib.auth.backends.ModelBackend")
    context, link = result.context, result.resource_link
    if result.destination == Destination.ASSIGNMENT:
        return redirect("courses:assignment", course_slug=context.course.slug, assignment_slug=link.assignment.slug)
    if result.destination == Destination.COURSE:
        if result.notice:
            messages.info(request, result.notice)
        return redirect("courses:course", course_slug=context.course.slug)
    if result.destination == Destination.LINK_RESOURCE:
        return redirect("lti:resource_link", link_id=link.pk)
    if result.destination == Destination.LINK_CONTEXT:
        request.session[CONTEXTS_TAUGHT] = [*request.session.get(CONTEXTS_TAUGHT, []), context.pk][-20:]
        return redirect(reverse("lti:context", args=[context.pk]) + f"?link={link.pk}")
    page = "lti/not_set_up.html" if result.destination == Destination.NOT_SET_UP else "lti/context_unlinked.html"
    link_page = settings.PORTAL_URL + reverse("lti:context", args=[context.pk])
    return render(request, page, {"context": context, "link_page": link_page})


@require_GET
def jwks(request):
    """The tool's public keys: the LMSs check the portal's service requests against them."""
    return JsonResponse(tool_jwks())


@login_required
def config(request):
    """For site admins: what to paste into Canvas and Moodle, and the platforms registered."""
    if not request.user.is_superuser:
        raise Http404("Only site admins register LMSs.")
    urls = {
        "login": settings.PORTAL_URL + reverse("lti:login"),
        "launch": launch_url(),
        "jwks": settings.PORTAL_URL + reverse("lti:jwks"),
    }
    canvas = {
        "title": "AISys Labs",
        "description": "Labs and their autograder",
        "oidc_initiation_url": urls["login"],
        "target_link_uri": urls["launch"],
        "public_jwk_url": urls["jwks"],
        "scopes": SCOPES,
        "extensions": [
            {
                "platform": "canvas.instructure.com",
                "privacy_level": "public",
                "settings": {
                    "placements": [
                        {"placement": "course_navigation", "message_type": "LtiResourceLinkRequest"},
                        {"placement": "link_selection", "message_type": "LtiResourceLinkRequest"},
                        {"placement": "assignment_selection", "message_type": "LtiResourceLinkRequest"},
                    ]
                },
            }
        ],
        "custom_fields": {},
    }
    platforms = LtiPlatform.objects.prefetch_related("contexts__course")
    return render(
        request,
        "lti/config.html",
        {"urls": urls, "canvas_json": json.dumps(canvas, indent=2), "platforms": platforms, "scopes": SCOPES},
    )


@login_required
def context_link(request, context_id: int):
    """Link an LMS course to a portal course: a site admin, or an instructor who has just launched it as
    its instructor (to one of the courses they teach)."""
    context = get_object_or_404(LtiContext.objects.select_related("platform", "course"), pk=context_id)
    courses = lti_linkable_courses(user=request.user)
    linked = context.course
    launched = context.pk in request.session.get(CONTEXTS_TAUGHT, [])
    if (
        not courses
        or not (request.user.is_superuser or launched)
        or (linked is not None and not can_manage_course(course=linked, user=request.user))
    ):
        raise Http404("No such LMS course, or linking it is not for you.")
    link = context.resource_links.filter(pk=request.GET.get("link") or 0).first()
    if request.method == "POST":
        course = next((c for c in courses if c.slug == request.POST.get("course")), None)
        if course is None:
            messages.error(request, "Choose one of the courses listed.")
        else:
            try:
                lti_context_link(context=context, course=course, by=request.user)
            except LtiRefused as exc:
                messages.error(request, str(exc))
            else:
                messages.success(request, f"{context.title or context.context_id} is linked to {course.title}.")
                if link is not None:
                    return redirect("lti:resource_link", link_id=link.pk)
                return redirect("courses:course", course_slug=course.slug)
    may_change = linked is None or request.user.is_superuser
    return render(request, "lti/context_link.html", {"context": context, "courses": courses, "may_change": may_change})


@login_required
def resource_link(request, link_id: int):
    """Say where an LMS link leads: an assignment of the linked course, or the course page."""
    link = get_object_or_404(
        LtiResourceLink.objects.select_related("platform", "context__course", "assignment"), pk=link_id
    )
    course = link.context.course
    if course is None or not can_manage_course(course=course, user=request.user):
        raise Http404("No such LMS link, or it is not for you.")
    assignments = list(course.assignments.order_by("due_at", "title"))
    if request.method == "POST":
        slug = request.POST.get("assignment", "")
        assignment = next((a for a in assignments if a.slug == slug), None)
        if slug and assignment is None:
            messages.error(request, "Choose one of the assignments listed, or the course page.")
        else:
            try:
                lti_resource_link_link(resource_link=link, assignment=assignment, by=request.user)
            except LtiRefused as exc:
                messages.error(request, str(exc))
            else:
                target = assignment.title if assignment else "the course page"
                messages.success(request, f"The LMS link {link.title or link.resource_link_id} leads to {target}.")
                if assignment is not None:
                    return redirect("courses:assignment", course_slug=course.slug, assignment_slug=assignment.slug)
                return redirect("courses:course", course_slug=course.slug)
    return render(request, "lti/resource_link.html", {"link": link, "course": course, "assignments": assignments})


@login_required
@require_POST
def roster_sync(request, course_slug: str):
    """The roster page's button: sync from every LMS course linked to this one (Names and Roles)."""
    course = get_object_or_404(Course, slug=course_slug, is_active=True)
    if not can_manage_course(course=course, user=request.user):
        raise Http404("No such course, or this page is not for you.")
    contexts = list(course.lti_contexts.select_related("platform"))
    if not contexts:
        messages.error(request, "No LMS course is linked to this course: launch the portal from the LMS first.")
    for context in contexts:
        try:
            done = lti_roster_sync(context=context, actor=request.user)
        except (LtiRefused, LmsUnavailable) as exc:
            messages.error(request, str(exc))
            continue
        refused = [line.describe() for line in done.plan.lines if line.action == "refused"]
        detail = f" Refused: {'; '.join(refused[:5])}{' …' if len(refused) > 5 else ''}" if refused else ""
        level = messages.WARNING if refused else messages.SUCCESS
        source = f"{context.platform.name} ({context.title or context.context_id})"
        messages.add_message(request, level, f"Roster synced from {source}: {done.summary()}.{detail}")
    return redirect("courses:roster", course_slug=course.slug)
