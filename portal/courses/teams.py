"""Teams: students who work together on a course's team assignments (``Assignment.team_size`` > 1).

A student is in at most one team of a course, and it is theirs on every team assignment of the
course: a team's submission is every member's, and its quota, late days and leaderboard row are
the team's (portal/submissions/standing.py, portal/leaderboards/services.py). Students form teams
by invitation and acceptance; staff set a team's members outright (the teams page, or the roster
CSV's ``team`` column), which also moves students out of other teams. A team that has submitted
keeps its members, so that its grades stay its members': only staff change it then.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Max, QuerySet

from portal.courses.audit import Action, audit
from portal.courses.models import Course, Enrollment, Team, TeamInvitation, TeamMember

MAX_NAME = 60


class TeamRefused(Exception):
    """The team change cannot be made; the message says why and what to do."""


# ------------------------------------------------------------------------------------------------
# reads
# ------------------------------------------------------------------------------------------------


def team_limit(*, course: Course) -> int:
    """The largest team any of the course's assignments takes (1: no team assignment)."""
    return course.assignments.aggregate(largest=Max("team_size"))["largest"] or 1


def team_of(*, course_id: int, user_id: int) -> Team | None:
    return Team.objects.filter(course_id=course_id, members__user_id=user_id).first()


def team_member_ids(*, team: Team) -> list[int]:
    return list(team.members.order_by("user__username").values_list("user_id", flat=True))


def teams_of_course(*, course: Course) -> QuerySet[Team]:
    return course.teams.prefetch_related("members__user", "invitations__invitee").order_by("name")


def members_by_team(*, team_ids) -> dict[int, list[int]]:
    """Each team's members' user ids (for spreading a team's submissions over its members)."""
    found: dict[int, list[int]] = {}
    for team_id, user_id in TeamMember.objects.filter(team_id__in=team_ids).values_list("team_id", "user_id"):
        found.setdefault(team_id, []).append(user_id)
    return found


# ------------------------------------------------------------------------------------------------
# students forming teams
# ------------------------------------------------------------------------------------------------


def _check_name(course: Course, name: str, *, exclude: Team | None = None) -> str:
    name = " ".join(name.split())
    if not name or len(name) > MAX_NAME:
        raise TeamRefused(f"A team's name is 1 to {MAX_NAME} characters.")
    taken = Team.objects.filter(course=course, name__iexact=name)
    if exclude is not None:
        taken = taken.exclude(pk=exclude.pk)
    if taken.exists():
        raise TeamRefused(f"The course has a team called '{name}' already; choose another name.")
    return name


def _check_student(course: Course, user: User, who: str) -> None:
    role = Enrollment.objects.filter(course=course, user=user).values_list("role", flat=True).first()
    if role != Enrollment.Role.STUDENT:
        raise TeamRefused(f"{who} not a student of this course: teams are of students.")


@transaction.atomic
def team_create(*, course: Course, name: str, creator: User) -> Team:
    """A student starts a team (of one, so far) and invites classmates into it."""
    if team_limit(course=course) < 2:
        raise TeamRefused("This course has no team assignment: there is no team to form.")
    _check_student(course, creator, "You are")
    if TeamMember.objects.filter(course=course, user=creator).exists():
        raise TeamRefused("You are in a team already: leave it first.")
    team = Team.objects.create(course=course, name=_check_name(course, name))
    TeamMember.objects.create(team=team, course=course, user=creator)
    TeamInvitation.objects.filter(team__course=course, invitee=creator).delete()
    return team


@transaction.atomic
def team_invite(*, team: Team, inviter: User, username: str) -> TeamInvitation:
    """A member invites a classmate who is in no team; members and open invitations together may
    not outnumber the course's largest team."""
    team = Team.objects.select_for_update().get(pk=team.pk)
    course = team.course
    if not team.members.filter(user=inviter).exists():
        raise TeamRefused("Only a member of the team invites people into it.")
    invitee = User.objects.filter(username=username.strip()).first()
    if invitee is None or not Enrollment.objects.filter(course=course, user=invitee).exists():
        raise TeamRefused(f"No student '{username.strip()[:150]}' in this course.")
    _check_student(course, invitee, f"{invitee.username} is")
    if TeamMember.objects.filter(course=course, user=invitee).exists():
        raise TeamRefused(f"{invitee.username} is in a team already.")
    if team.invitations.filter(invitee=invitee).exists():
        raise TeamRefused(f"{invitee.username} is invited already.")
    limit = team_limit(course=course)
    if team.members.count() + team.invitations.count() >= limit:
        raise TeamRefused(f"Teams have at most {limit} members here, counting open invitations: withdraw one first.")
    return TeamInvitation.objects.create(team=team, invitee=invitee, invited_by=inviter)


@transaction.atomic
def team_invitation_answer(*, invitation: TeamInvitation, user: User, accept: bool) -> Team | None:
    """The invitee joins the team (and their other invitations of the course go), or declines."""
    if invitation.invitee_id != user.pk:
        raise TeamRefused("This invitation is not yours.")
    team = Team.objects.select_for_update().get(pk=invitation.team_id)
    if not accept:
        invitation.delete()
        return None
    if TeamMember.objects.filter(course=team.course, user=user).exists():
        raise TeamRefused("You are in a team already: leave it first.")
    if team.members.count() >= team_limit(course=team.course):
        raise TeamRefused(f"Team {team.name} is full.")
    TeamMember.objects.create(team=team, course=team.course, user=user)
    TeamInvitation.objects.filter(team__course=team.course, invitee=user).delete()
    return team


@transaction.atomic
def team_leave(*, course: Course, user: User) -> None:
    """A student leaves their team, unless it has submitted (then only staff move them); a team
    left empty, with nothing submitted, is deleted."""
    membership = TeamMember.objects.select_related("team").filter(course=course, user=user).first()
    if membership is None:
        raise TeamRefused("You are in no team.")
    team = membership.team
    if team.submissions.exists():
        raise TeamRefused(
            f"Team {team.name} has submitted work, which stays its members': ask your instructor to change teams."
        )
    membership.delete()
    if not team.members.exists():
        team.delete()


# ------------------------------------------------------------------------------------------------
# staff setting teams
# ------------------------------------------------------------------------------------------------


def team_move(*, course: Course, user: User, name: str) -> tuple[str, str]:
    """Put a student in the team called ``name`` (made if new; "" takes them out of any), moving
    them out of their team; returns (old team name, new team name). For staff: no checks of size
    or of submissions (a moved student's grade on a team assignment is their new team's)."""
    old = TeamMember.objects.select_related("team").filter(course=course, user=user).first()
    old_name = old.team.name if old else ""
    name = " ".join(name.split())[:MAX_NAME]
    if old is not None and old.team.name.casefold() == name.casefold():
        return old_name, old_name
    if old is not None:
        old.delete()
        if not old.team.members.exists() and not old.team.submissions.exists():
            old.team.delete()
    if name:
        team = Team.objects.filter(course=course, name__iexact=name).first() or Team.objects.create(
            course=course, name=name
        )
        TeamMember.objects.create(team=team, course=course, user=user)
        TeamInvitation.objects.filter(team__course=course, invitee=user).delete()
    return old_name, name


@transaction.atomic
def team_set(*, course: Course, name: str, usernames: list[str], by: User) -> Team | None:
    """Staff make team ``name`` exactly these students (moving them from other teams; an empty
    list empties it). Audited. Refuses, changing nothing, if a name is not a student's."""
    name = " ".join(name.split())
    if not name or len(name) > MAX_NAME:
        raise TeamRefused(f"A team's name is 1 to {MAX_NAME} characters.")
    students = {
        u.username: u
        for u in User.objects.filter(
            username__in=usernames, enrollments__course=course, enrollments__role=Enrollment.Role.STUDENT
        )
    }
    unknown = [u for u in usernames if u not in students]
    if unknown:
        raise TeamRefused(f"Not students of this course: {', '.join(unknown[:20])}. Nothing was changed.")
    team = Team.objects.filter(course=course, name__iexact=name).first()
    before = sorted(team.members.values_list("user__username", flat=True)) if team else []
    for username in before:
        if username not in students:
            team_move(course=course, user=User.objects.get(username=username), name="")
    for user in students.values():
        team_move(course=course, user=user, name=team.name if team else name)
    team = Team.objects.filter(course=course, name__iexact=name).first()
    after = sorted(students)
    audit(
        course=course,
        actor=by,
        action=Action.TEAMS,
        summary=f"Team {name}: {', '.join(after) or '(nobody)'} (was {', '.join(before) or 'nobody'})"[:500],
        team=name,
        members=after,
        before=before,
    )
    return team
