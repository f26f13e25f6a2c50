"""Teams in the browser: students form theirs on the course page; instructors set any on the
teams page (portal/courses/teams.py does the work)."""

from __future__ import annotations

import re

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from portal.access import can_manage_course, course_role
from portal.courses.models import Course, Team, TeamInvitation
from portal.courses.teams import (
    TeamRefused,
    team_create,
    team_invitation_answer,
    team_invite,
    team_leave,
    team_limit,
    team_of,
    team_set,
    teams_of_course,
)


@login_required
@require_POST
def team_action(request, course_slug: str):
    """A student creates a team, invites a classmate, withdraws an invitation, answers one, or leaves."""
    course = get_object_or_404(Course, slug=course_slug, is_active=True)
    if course_role(course=course, user=request.user) != "student":
        raise Http404("No such course, or you are not a student of it.")
    action, user = request.POST.get("action"), request.user
    try:
        if action == "create":
            team = team_create(course=course, name=request.POST.get("name", ""), creator=user)
            messages.success(request, f"Team {team.name} is formed: invite your teammates.")
        elif action == "invite":
            team = team_of(course_id=course.pk, user_id=user.pk)
            if team is None:
                raise TeamRefused("You are in no team: form one first.")
            invitation = team_invite(team=team, inviter=user, username=request.POST.get("username", ""))
            messages.success(request, f"{invitation.invitee.username} is invited; they accept on this page.")
        elif action in ("accept", "decline", "withdraw"):
            invitation = TeamInvitation.objects.filter(pk=request.POST.get("invitation"), team__course=course).first()
            if invitation is None:
                raise TeamRefused("That invitation is gone (withdrawn, or answered already).")
            if action == "withdraw":
                if not invitation.team.members.filter(user=user).exists():
                    raise TeamRefused("Only a member of the team withdraws its invitations.")
                invitation.delete()
                messages.success(request, f"The invitation of {invitation.invitee.username} is withdrawn.")
            else:
                team = team_invitation_answer(invitation=invitation, user=user, accept=action == "accept")
                messages.success(request, f"You are in team {team.name}." if team else "Invitation declined.")
        elif action == "leave":
            team_leave(course=course, user=user)
            messages.success(request, "You left your team.")
        else:
            raise TeamRefused("Unknown action.")
    except TeamRefused as exc:
        messages.error(request, str(exc))
    return redirect("courses:course", course_slug=course.slug)


@login_required
def staff_teams(request, course_slug: str):
    """The course's teams with their members and open invitations; instructors set a team's members."""
    course = get_object_or_404(Course, slug=course_slug, is_active=True)
    if not can_manage_course(course=course, user=request.user):
        raise Http404("No such course, or this page is not for you.")
    if request.method == "POST":
        usernames = [u for u in re.split(r"[\s,;]+", request.POST.get("members", "")) if u]
        try:
            team = team_set(course=course, name=request.POST.get("name", ""), usernames=usernames, by=request.user)
        except TeamRefused as exc:
            messages.error(request, str(exc))
        else:
            name = team.name if team else request.POST.get("name", "").strip()
            messages.success(request, f"Team {name}: {', '.join(usernames) or 'nobody'}.")
            return redirect("courses:teams", course_slug=course.slug)
    teams = list(teams_of_course(course=course))
    in_team = {m.user_id for t in teams for m in t.members.all()}
    loners = course.enrollments.filter(role="student").exclude(user_id__in=in_team).select_related("user")
    return render(
        request,
        "courses/teams.html",
        {
            "course": course,
            "teams": teams,
            "loners": [e.user for e in loners.order_by("user__username")],
            "limit": team_limit(course=course),
            "submitted": set(
                Team.objects.filter(course=course, submissions__isnull=False).values_list("pk", flat=True)
            ),
        },
    )
