"""LTI's writes: what a verified launch does (who it logs in, into which course and assignment),
linking an LMS course and link to a portal course and assignment, roster sync through Names and
Roles, and grade passback through Assignment and Grade Services.

People reach a course the way they do everywhere else: through the roster's code
(portal/courses/roster.py), one row per LMS member, planned and applied in one transaction, with
the same outcomes (created, updated, unchanged, refused) and the same rules (an admin's account
is not managed by a roster; an email address belongs to one account). An LMS member is matched
to an account by the LMS's user id once recorded (``LtiUser``), else by email to an existing
account (never a site admin's), else a new account is made; nobody is ever removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import requests
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from pylti1p3.assignments_grades import AssignmentsGradesService
from pylti1p3.exception import LtiException, LtiServiceException
from pylti1p3.grade import Grade as AgsScore
from pylti1p3.lineitem import LineItem
from pylti1p3.names_roles import NamesRolesProvisioningService

from portal.access import can_manage_course, can_manage_labs
from portal.accounts.services import username_for_email
from portal.courses.audit import Action, audit
from portal.courses.models import Assignment, Course, Enrollment
from portal.courses.roster import MAX_ROWS, Line, Plan, import_rows
from portal.lti.launch import Launch
from portal.lti.models import LtiContext, LtiGradePassback, LtiPlatform, LtiResourceLink, LtiUser
from portal.lti.tool import service_connector

LOGGER = logging.getLogger(__name__)
MAX_MEMBER_PAGES = 200  # of Names and Roles answers (LMSs page by 10 to 1,000 members)

MEMBERSHIP = "http://purl.imsglobal.org/vocab/lis/v2/membership"
SCORE_SCOPE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
LINEITEM_SCOPE = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem"
SCORE_MAXIMUM = 100.0


class LtiRefused(Exception):
    """An LTI action that must not happen; the message says why and who can fix it."""


class LmsUnavailable(Exception):
    """The LMS could not be reached, or failed (5xx, 429): worth trying again later."""


def lti_role(*, roles: list[str]) -> str | None:
    """The course role an LMS's roles claim gives: TeachingAssistant -> ta, Instructor ->
    instructor, Learner -> student; None for any other (a mentor, an observer). Only context
    (membership) roles count, in their full or short form; institution and system roles do not."""
    names = set()
    for role in roles:
        if role.startswith(MEMBERSHIP):  # "…/membership#Instructor", "…/membership/Instructor#TeachingAssistant"
            names.add(role.rsplit("#", 1)[-1])
        elif "/" not in role and "#" not in role:
            names.add(role)
    if "TeachingAssistant" in names:
        return Enrollment.Role.TA
    if "Instructor" in names:
        return Enrollment.Role.INSTRUCTOR
    if "Learner" in names:
        return Enrollment.Role.STUDENT
    return None


@dataclass(frozen=True)
class Member:
    """A person in an LMS course, from a launch or from the Names and Roles membership."""

    sub: str
    email: str = ""
    given_name: str = ""
    family_name: str = ""
    roles: tuple[str, ...] = ()


def lti_user_find(*, platform: LtiPlatform, sub: str, email: str) -> User | None:
    """The account an LMS user is: by their recorded LMS id, else by email (exactly one
    account, not a site admin's, not linked to another user of this LMS); None: no account yet.
    ``LtiRefused`` when the email cannot decide."""
    identity = LtiUser.objects.select_related("user").filter(platform=platform, sub=sub).first()
    if identity is not None:
        return identity.user
    if not email:
        return None
    users = list(User.objects.filter(email__iexact=email).order_by("pk")[:2])
    if len(users) > 1:
        raise LtiRefused(
            f"more than one account has the email address {email}: an admin gives each account its own address"
        )
    if not users:
        return None
    user = users[0]
    if user.is_superuser:
        raise LtiRefused(
            f"the account with the email address {email} is a site admin's, which is never matched by email: "
            "an admin links it in Django admin (LTI users)"
        )
    if LtiUser.objects.filter(platform=platform, user=user).exists():
        raise LtiRefused(
            f"the account with the email address {email} is linked to another user of {platform.name}: "
            "if it is yours, an admin removes the old link (Django admin, LTI users)"
        )
    return user


def _refused(number: int, label: str, reason: str) -> Line:
    return Line(number=number, username=label, action="refused", reason=reason)


@transaction.atomic
def lti_members_apply(*, platform: LtiPlatform, course: Course, members: list[Member]) -> Plan:
    """Enroll (or update) the LMS's members in ``course`` through the roster's import, and
    record each one's LMS id; the plan's line numbers are the members' places in ``members``."""
    rows, refused, subs = [], [], {}
    taken: set[str] = set()
    for number, member in enumerate(members, start=1):
        label = member.email or member.sub or "(no user id)"
        role = lti_role(roles=list(member.roles))
        if not member.sub:
            refused.append(_refused(number, label, "the LMS sent this member without a user id"))
            continue
        if role is None:
            shown = ", ".join(r.rsplit("#", 1)[-1] for r in member.roles) or "none"
            refused.append(_refused(number, label, f"no Learner, TeachingAssistant or Instructor role ({shown})"))
            continue
        try:
            user = lti_user_find(platform=platform, sub=member.sub, email=member.email)
        except LtiRefused as exc:
            refused.append(_refused(number, label, str(exc)))
            continue
        if user is None:
            if not member.email:
                refused.append(
                    _refused(
                        number,
                        label,
                        "the LMS did not send an email address, which a new account needs: let the tool see "
                        "email addresses in the LMS (docs/lti.md)",
                    )
                )
                continue
            username, email = username_for_email(email=member.email, taken=taken), member.email
        else:
            username, email = user.username, member.email or user.email
        taken.add(username.lower())
        row = {"username": username, "email": email, "role": role}
        if member.given_name:
            row["first_name"] = member.given_name[:150]
        if member.family_name:
            row["last_name"] = member.family_name[:150]
        rows.append((number, row))
        subs[number] = member.sub
    plan = import_rows(course, rows)
    for line in plan.lines:
        if line.action != "refused":
            user = User.objects.get(username=line.username)
            LtiUser.objects.get_or_create(platform=platform, sub=subs[line.number], defaults={"user": user})
    plan.lines = sorted(plan.lines + refused, key=lambda line: line.number)
    return plan


# Launches ---------------------------------------------------------------------------------------


class Destination:
    ASSIGNMENT = "assignment"  # the resource link's assignment
    COURSE = "course"  # the course page
    LINK_RESOURCE = "link_resource"  # staff: choose where this LMS link leads
    LINK_CONTEXT = "link_context"  # staff with an account: choose the course this LMS course is
    CONTEXT_UNLINKED = "context_unlinked"  # staff without an account that may link: who to ask
    NOT_SET_UP = "not_set_up"  # students of an LMS course not linked yet


@dataclass
class LaunchResult:
    """Where a verified launch goes, and whom it logs in (None: nobody)."""

    destination: str
    context: LtiContext
    resource_link: LtiResourceLink
    user: User | None = None
    notice: str = ""


def _launch_record(*, launch: Launch) -> tuple[LtiContext, LtiResourceLink]:
    """The launch's context and resource link, with the service endpoints it brings."""
    claim = launch.context
    if not claim.get("id"):
        raise LtiRefused(
            "This launch comes from outside an LMS course: add the portal to a course and launch it there."
        )
    context, _ = LtiContext.objects.get_or_create(platform=launch.platform, context_id=str(claim["id"]))
    ags = launch.ags
    _save_changes(
        context,
        title=str(claim.get("title", ""))[:255],
        label=str(claim.get("label", ""))[:255],
        memberships_url=launch.memberships_url or context.memberships_url,
        lineitems_url=ags.get("lineitems") or context.lineitems_url,
    )
    claim = launch.resource_link
    link, _ = LtiResourceLink.objects.get_or_create(
        platform=launch.platform, resource_link_id=str(claim["id"]), defaults={"context": context}
    )
    changes = {"context": context, "title": str(claim.get("title", ""))[:255]}
    if ags:
        changes["lineitem_url"] = ags.get("lineitem", "") or link.lineitem_url
        changes["lineitems_url"] = ags.get("lineitems", "") or link.lineitems_url
        changes["ags_scopes"] = list(ags.get("scope", []))
    _save_changes(link, **changes)
    return context, link


def _save_changes(row, **values) -> None:
    """Write only what a launch changed: at the start of a class every student's launch names the
    same context and link, and an unconditional save would take their rows' lock every time."""
    changed = [name for name, value in values.items() if getattr(row, name) != value]
    for name in changed:
        setattr(row, name, values[name])
    if changed:
        row.save(update_fields=[*changed, "updated_at"])  # auto_now is written only when named


def _identity_record(*, platform: LtiPlatform, sub: str, user: User) -> None:
    LtiUser.objects.get_or_create(platform=platform, sub=sub, defaults={"user": user})
    LtiUser.objects.filter(platform=platform, sub=sub).update(last_launch_at=timezone.now())


@transaction.atomic
def lti_launch(*, launch: Launch) -> LaunchResult:
    """What a verified launch does: record its context and link, find or enroll the person
    (through the roster), and say where they go. ``LtiRefused`` when they may not come in."""
    context, link = _launch_record(launch=launch)
    role = lti_role(roles=launch.roles)
    if role is None:
        raise LtiRefused(
            "Your role in this LMS course is not one the portal knows (it admits learners, teaching assistants "
            "and instructors): ask your instructor."
        )
    platform, course = launch.platform, context.course
    if course is None:
        if role != Enrollment.Role.INSTRUCTOR:  # linking is the LMS course's instructor's (a TA's neither)
            return LaunchResult(Destination.NOT_SET_UP, context, link)
        try:
            user = lti_user_find(platform=platform, sub=launch.sub, email=launch.email)
        except LtiRefused:
            user = None
        if user is None or not user.is_active or not can_manage_labs(user=user):
            return LaunchResult(Destination.CONTEXT_UNLINKED, context, link)
        _identity_record(platform=platform, sub=launch.sub, user=user)
        return LaunchResult(Destination.LINK_CONTEXT, context, link, user=user)

    user = lti_user_find(platform=platform, sub=launch.sub, email=launch.email)
    if user is not None and not user.is_active:
        raise LtiRefused(f"Your account {user.username} is disabled: ask your instructor.")
    if user is not None and user.is_superuser:  # in every course already; rosters do not manage admins
        _identity_record(platform=platform, sub=launch.sub, user=user)
    else:
        member = Member(launch.sub, launch.email, launch.given_name, launch.family_name, tuple(launch.roles))
        plan = lti_members_apply(platform=platform, course=course, members=[member])
        line = plan.lines[0]
        identity = LtiUser.objects.select_related("user").filter(platform=platform, sub=launch.sub).first()
        user = identity.user if identity is not None else None
        if user is None or not Enrollment.objects.filter(course=course, user=user).exists():
            # The roster's reason may name another account: it goes to the log, not to the browser.
            LOGGER.warning("LTI launch of %s from %s refused by the roster: %s", launch.sub, platform, line.describe())
            raise LtiRefused(
                f"You could not be added to {course.title}: the portal's roster refused your LMS account "
                f"({launch.email or 'no email address'}). Ask your instructor; an admin finds the reason in the "
                "portal's log."
            )
        if line.action in ("create", "update"):
            audit(
                course=course,
                actor=None,
                actor_name=f"(LTI launch from {platform.name})",
                action=Action.ROSTER_IMPORT,
                summary=f"Roster: {user.username} {line.action}d at a launch from {platform.name}",
                lines=[line.describe()],
            )
        _identity_record(platform=platform, sub=launch.sub, user=user)
    if link.linked_at is not None:
        if link.assignment_id is not None and link.assignment.course_id == course.pk:
            return LaunchResult(Destination.ASSIGNMENT, context, link, user=user)
        return LaunchResult(Destination.COURSE, context, link, user=user)
    if can_manage_course(course=course, user=user):
        return LaunchResult(Destination.LINK_RESOURCE, context, link, user=user)
    return LaunchResult(
        Destination.COURSE,
        context,
        link,
        user=user,
        notice="This link of your LMS does not lead to an assignment yet: here is the course.",
    )


def lti_linkable_courses(*, user: User) -> list[Course]:
    """The courses ``user`` may link an LMS course to: all for site admins, else those they teach."""
    courses = Course.objects.filter(is_active=True)
    if not user.is_superuser:
        courses = courses.filter(enrollments__user=user, enrollments__role=Enrollment.Role.INSTRUCTOR)
    return list(courses.order_by("title"))


@transaction.atomic
def lti_context_link(*, context: LtiContext, course: Course, by: User) -> None:
    """Link an LMS course to a portal course (its instructors or a site admin); once linked,
    only a site admin links it elsewhere, which unlinks its links' assignments. Audited."""
    if not can_manage_course(course=course, user=by):
        raise LtiRefused(f"Only the instructors of {course.title} and site admins link an LMS course to it.")
    if context.course_id not in (None, course.pk):
        if not by.is_superuser:
            raise LtiRefused(f"This LMS course is linked to {context.course.title} already: a site admin changes that.")
        context.resource_links.update(assignment=None, linked_at=None)
    context.course = course
    context.save(update_fields=["course", "updated_at"])
    audit(
        course=course,
        actor=by,
        action=Action.COURSE_SETTINGS,
        summary=f"LMS course {context.title or context.context_id} ({context.platform.name}) linked to this course",
        platform=context.platform.name,
        context_id=context.context_id,
    )


@transaction.atomic
def lti_resource_link_link(*, resource_link: LtiResourceLink, assignment: Assignment | None, by: User) -> None:
    """Say where an LMS link leads: an assignment of the linked course, or (None) the course
    page. The assignment's grades then pass back to the link's line item. Audited."""
    course = resource_link.context.course
    if course is None:
        raise LtiRefused("Link the LMS course to a portal course first.")
    if not can_manage_course(course=course, user=by):
        raise LtiRefused(f"Only the instructors of {course.title} and site admins say where its LMS links lead.")
    if assignment is not None and assignment.course_id != course.pk:
        raise LtiRefused(f"{assignment.title} is not an assignment of {course.title}.")
    resource_link.assignment, resource_link.linked_at = assignment, timezone.now()
    resource_link.save(update_fields=["assignment", "linked_at", "updated_at"])
    audit(
        course=course,
        actor=by,
        action=Action.COURSE_SETTINGS,
        summary=f"LMS link {resource_link.title or resource_link.resource_link_id} ({resource_link.platform.name}) "
        f"leads to {assignment.title if assignment else 'the course page'}",
        resource_link_id=resource_link.resource_link_id,
        assignment=assignment.slug if assignment else None,
    )


# Roster sync (Names and Role Provisioning Services) ---------------------------------------------


@dataclass
class RosterSync:
    context: LtiContext
    plan: Plan
    inactive: int = 0

    def summary(self) -> str:
        left = f", {self.inactive} inactive in the LMS left as they are" if self.inactive else ""
        return self.plan.summary() + left


def _lms_error(platform: LtiPlatform, exc: Exception) -> str:
    if isinstance(exc, LtiServiceException):
        return f"{platform.name} answered {exc.response.status_code} to {exc.response.url}: {exc.response.text[:300]}"
    return f"{platform.name} could not be reached or answered something unreadable ({type(exc).__name__}: {exc})"


def lti_roster_sync(*, context: LtiContext, actor: User | None, actor_name: str = "(system)") -> RosterSync:
    """Bring the linked course's roster in line with the LMS course's active members (Names and
    Roles), as a roster import does: created, updated, unchanged or refused, nobody removed.
    Audited when it changes or refuses something. ``LmsUnavailable`` when the LMS fails."""
    course, platform = context.course, context.platform
    if course is None:
        raise LtiRefused(f"The LMS course {context} is not linked to a portal course yet: link it first.")
    if not context.memberships_url:
        raise LtiRefused(
            f"{platform.name} has not given the Names and Roles address of {context}: enable Names and Role "
            "Provisioning for the tool in the LMS and launch it once from the course (docs/lti.md)."
        )
    service = NamesRolesProvisioningService(
        service_connector(platform), {"context_memberships_url": context.memberships_url}
    )
    found, url, pages = [], context.memberships_url, 0
    try:
        while url:  # page by page, bounded: the LMS's answer is not trusted to end
            pages += 1
            if pages > MAX_MEMBER_PAGES or len(found) > MAX_ROWS:
                raise LtiRefused(
                    f"{platform.name} answered with more than {MAX_MEMBER_PAGES} pages or {MAX_ROWS:,} members; "
                    "nothing was changed: import the roster as a CSV file instead."
                )
            members, url = service.get_members_page(url)
            found.extend(m for m in (members if isinstance(members, list) else []) if isinstance(m, dict))
    except (LtiException, requests.RequestException, ValueError, KeyError, TypeError) as exc:
        raise LmsUnavailable(f"The roster could not be read: {_lms_error(platform, exc)}. Try again later.")
    members, inactive = [], 0
    for entry in found:
        if entry.get("status", "Active") != "Active":
            inactive += 1
            continue
        members.append(
            Member(
                sub=str(entry.get("user_id") or ""),
                email=(entry.get("email") or "").strip(),
                given_name=(entry.get("given_name") or "").strip(),
                family_name=(entry.get("family_name") or "").strip(),
                roles=tuple(str(role) for role in entry.get("roles", [])),
            )
        )
    with transaction.atomic():
        plan = lti_members_apply(platform=platform, course=course, members=members)
        done = RosterSync(context=context, plan=plan, inactive=inactive)
        if not plan.all_accepted or plan.count("create") or plan.count("update"):
            audit(
                course=course,
                actor=actor,
                actor_name=actor_name,
                action=Action.ROSTER_IMPORT,
                summary=f"Roster synced from {platform.name} ({context.title or context.context_id}): {done.summary()}",
                lines=[line.describe() for line in plan.lines if line.action != "unchanged"][:1000],
            )
    return done


# Grade passback (Assignment and Grade Services) -------------------------------------------------


@dataclass(frozen=True)
class Passback:
    """What passing back one student's score to one LMS link did: ``sent``, ``unchanged``
    (that score was sent already), or ``failed`` (``error`` says why; not worth retrying)."""

    resource_link_id: int
    outcome: str
    score: float | None
    error: str = ""


def lti_grade_passback(*, assignment: Assignment, student: User) -> list[Passback]:
    """Send the student's final score (``grade_of(...).final``, out of 100) to the line item of
    each LMS link of the assignment where the student has an LMS identity. Idempotent: a score
    already sent is not sent again. Every failure is recorded on its ``LtiGradePassback`` row;
    ``LmsUnavailable`` (after trying every link) when one is worth retrying."""
    identities = {identity.platform_id: identity for identity in LtiUser.objects.filter(user=student)}
    if not identities:
        return []
    links = list(
        LtiResourceLink.objects.filter(assignment=assignment, platform_id__in=identities).select_related("platform")
    )
    if not links:
        return []
    from portal.courses.gradebook import grade_of  # gradebook calls lti_grade_changed: no import cycle

    final = grade_of(assignment=assignment, student=student).final
    score = None if final is None else max(0.0, min(SCORE_MAXIMUM, float(final)))
    results, unreachable = [], []
    for link in links:
        try:
            results.append(_passback_one(link=link, identity=identities[link.platform_id], score=score))
        except LmsUnavailable as exc:
            unreachable.append(str(exc))
    if unreachable:
        raise LmsUnavailable("; ".join(unreachable))
    return results


def _passback_one(*, link: LtiResourceLink, identity: LtiUser, score: float | None) -> Passback:
    record = LtiGradePassback.objects.filter(resource_link=link, student_id=identity.user_id).first()
    if record is None and score is None:
        return Passback(link.pk, "unchanged", None)  # no grade, and none was ever sent
    if record is not None and record.status == LtiGradePassback.Status.SENT and record.score == score:
        return Passback(link.pk, "unchanged", score)
    platform = link.platform
    if SCORE_SCOPE not in link.ags_scopes:
        return _failed(
            link,
            identity,
            score,
            f"{platform.name} did not grant the tool the Assignment and Grade Services score scope for this link: "
            "enable it for the tool in the LMS and launch the link again (docs/lti.md)",
        )
    ags_score = (
        AgsScore()
        .set_activity_progress("Completed" if score is not None else "Initialized")
        .set_grading_progress("FullyGraded" if score is not None else "NotReady")
        .set_timestamp(timezone.now().isoformat(timespec="milliseconds"))
        .set_user_id(identity.sub)
    )
    if score is not None:
        ags_score.set_score_given(score).set_score_maximum(SCORE_MAXIMUM)
    try:
        lineitem_url = link.lineitem_url or _lineitem_create(link)
        service = AssignmentsGradesService(
            service_connector(platform), {"scope": link.ags_scopes, "lineitem": lineitem_url}
        )
        service.put_grade(ags_score)
    except LtiServiceException as exc:
        status = exc.response.status_code
        error = _lms_error(platform, exc)
        if status >= 500 or status in (408, 429):
            _failed(link, identity, score, error)
            raise LmsUnavailable(error)
        return _failed(link, identity, score, error)
    except (requests.RequestException, ValueError) as exc:  # unreachable, timed out, an unreadable answer
        error = _lms_error(platform, exc)
        _failed(link, identity, score, error)
        raise LmsUnavailable(error)
    except LtiException as exc:
        return _failed(link, identity, score, f"{platform.name}: {exc}")
    LtiGradePassback.objects.update_or_create(
        resource_link=link,
        student_id=identity.user_id,
        defaults={
            "score": score,
            "status": LtiGradePassback.Status.SENT,
            "attempts": 0,
            "last_error": "",
            "sent_at": timezone.now(),
        },
    )
    return Passback(link.pk, "sent", score)


def _lineitem_create(link: LtiResourceLink) -> str:
    """The link's line item where the LMS gave none at launch (a plain link in Moodle): found by
    its tag, or created where the LMS granted the line item scope."""
    if not link.lineitems_url or LINEITEM_SCOPE not in link.ags_scopes:
        raise LtiException(
            "the LMS gave no line item for this link and no right to create one: make it a graded activity in "
            "the LMS (Moodle: accept grades from the tool; Canvas: an assignment) and launch it again"
        )
    assignment = link.assignment
    service = AssignmentsGradesService(
        service_connector(link.platform), {"scope": link.ags_scopes, "lineitems": link.lineitems_url}
    )
    wanted = (
        LineItem()
        .set_label(assignment.title)
        .set_score_maximum(SCORE_MAXIMUM)
        .set_resource_link_id(link.resource_link_id)
        .set_tag(f"aisys:{assignment.course.slug}/{assignment.slug}")
    )
    lineitem_url = service.find_or_create_lineitem(wanted, find_by="tag").get_id() or ""
    LtiResourceLink.objects.filter(pk=link.pk).update(lineitem_url=lineitem_url)
    link.lineitem_url = lineitem_url
    return lineitem_url


def _failed(link: LtiResourceLink, identity: LtiUser, score: float | None, error: str) -> Passback:
    LOGGER.warning("LTI grade passback to %s for %s failed: %s", link, identity.user_id, error)
    record, _ = LtiGradePassback.objects.get_or_create(
        resource_link=link,
        student_id=identity.user_id,
        defaults={"status": LtiGradePassback.Status.FAILED, "score": score},
    )
    LtiGradePassback.objects.filter(pk=record.pk).update(
        score=score,
        status=LtiGradePassback.Status.FAILED,
        attempts=F("attempts") + 1,  # two tries at once both count
        last_error=error[:2000],
        updated_at=timezone.now(),
    )
    return Passback(link.pk, "failed", score, error)


def lti_grade_changed(*, assignment_id: int, student_id: int) -> None:
    """A student's final grade on an assignment may have changed: pass it back to the LMS after
    the transaction commits. One query and nothing else where the assignment has no LMS link
    or the student no LMS identity; never raises into grading (a broker that is away is logged)."""
    linked = LtiResourceLink.objects.filter(assignment_id=assignment_id, platform__users__user_id=student_id)
    if not linked.exists():
        return
    transaction.on_commit(partial(_enqueue_passback, assignment_id=assignment_id, student_id=student_id), robust=True)


def _enqueue_passback(*, assignment_id: int, student_id: int) -> None:
    from portal.celery import app  # the portal's app, whichever Celery app is current in this process
    from portal.lti.tasks import GRADE_PASSBACK  # the task module imports this one

    app.tasks[GRADE_PASSBACK].delay(assignment_id=assignment_id, student_id=student_id)
