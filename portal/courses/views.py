import base64
import io
import zipfile
from collections import defaultdict

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.db import transaction
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.text import slugify
from django.views.decorators.http import require_POST, require_safe

from portal.access import can_manage_course, course_role, is_course_staff, section_scope
from portal.accounts.invitations import needs_invitation, send_invitation
from portal.courses.audit import Action, audit
from portal.courses.forms import AssignmentForm, CourseForm, CourseSettingsForm, ExtensionForm, OverrideForm
from portal.courses.gradebook import export_csv, grade_of, gradebook, override_set, sort_rows
from portal.courses.models import Assignment, Course, Extension, TeamInvitation
from portal.courses.policies import grace_days_spent, hidden_patterns, reveal_at, window_for
from portal.courses.roster import MAX_BYTES as ROSTER_MAX_BYTES
from portal.courses.roster import RosterError, audit_import, import_roster, import_rows, invite_new_accounts
from portal.courses.selectors import (
    assignment_for_user,
    assignments_for_user,
    changed_fields,
    courses_for_user,
    student_sections,
)
from portal.courses.services import (
    NicknameRefused,
    assignment_saved,
    extension_grant,
    extension_revoke,
    nickname_set,
)
from portal.courses.teams import team_limit, team_member_ids, team_of
from portal.submissions.forms import SubmitForm
from portal.submissions.models import Job, Rejudge
from portal.submissions.rejudge import RejudgeRefused, rejudge_progress, rejudge_start
from portal.submissions.selectors import submissions_for_assignment
from portal.submissions.standing import grace_days_by_assignment, latest_extension, owned_submissions, standing_for


@login_required
def home(request):
    return render(request, "courses/home.html", {"courses": courses_for_user(user=request.user)})


class _Refused(Exception):
    pass


@login_required
def course_new(request):
    """A site admin creates a course and names its first instructor (invited if the account is new)."""
    if not request.user.is_superuser:
        raise Http404("Only site admins create courses.")
    form = CourseForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        username, email = form.cleaned_data["instructor_username"], form.cleaned_data["instructor_email"]
        try:
            with transaction.atomic():
                course = form.save()
                sent = []
                if username:
                    row = {"username": username, "email": email, "role": "instructor"}
                    existing = User.objects.filter(username=username).first()
                    if existing is not None and not email:
                        row["email"] = existing.email  # an account's own address: nothing to change
                    named = import_rows(course, [(1, row)])
                    if not named.all_accepted:
                        raise _Refused(named.lines[0].reason)
                    sent = invite_new_accounts(named)
        except _Refused as exc:
            form.add_error("instructor_username", f"{username}: {exc}")
        else:
            invited = f" An invitation went to {sent[0]}." if sent else ""
            messages.success(request, f"Course {course.title} created.{invited}")
            return redirect("courses:course", course_slug=course.slug)
    return render(request, "courses/course_new.html", {"form": form})


@login_required
def course_detail(request, course_slug: str):
    course = get_object_or_404(Course, slug=course_slug, is_active=True)
    role = course_role(course=course, user=request.user)
    if role is None:
        raise Http404("No such course, or you are not enrolled in it.")
    assignments = list(assignments_for_user(course=course, user=request.user))
    team = team_of(course_id=course.pk, user_id=request.user.pk) if role == "student" else None
    mates = team_member_ids(team=team) if team else [request.user.pk]
    extensions = defaultdict(list)  # the user's and their teammates', in one query
    for extension in Extension.objects.filter(assignment__course=course, student_id__in=mates):
        extensions[extension.assignment_id].append(extension)
    for assignment in assignments:  # a team's window: the latest-due extension of its members
        who = mates if assignment.team_size > 1 else [request.user.pk]
        mine = latest_extension(e for e in extensions[assignment.pk] if e.student_id in who)
        assignment.window = window_for(assignment, mine)
        assignment.closes = assignment.window.closes_at(assignment.late_policy)
    grace = None
    if role == "student" and course.grace_days:
        spent = grace_days_spent(grace_days_by_assignment(course_id=course.pk, student=request.user))
        grace = {"bank": course.grace_days, "spent": spent, "left": max(0, course.grace_days - spent)}
    return render(
        request,
        "courses/course.html",
        {
            "course": course,
            "role": role,
            "assignments": assignments,
            "grace": grace,
            "now": timezone.now(),
            "can_manage_course": can_manage_course(course=course, user=request.user),
            "is_staff": is_course_staff(course=course, user=request.user),
            "nickname": course.enrollments.filter(user=request.user).values_list("nickname", flat=True).first(),
            "team_limit": team_limit(course=course),
            "team": team,
            "team_invitations": TeamInvitation.objects.filter(team__course=course, invitee=request.user)
            .select_related("team", "invited_by")
            .order_by("team__name"),
        },
    )


def _course_or_404(request, course_slug: str, *, may=can_manage_course) -> Course:
    """The course, if ``may`` lets the user in (its instructors and admins by default)."""
    course = get_object_or_404(Course, slug=course_slug, is_active=True)
    if not may(course=course, user=request.user):
        raise Http404("No such course, or this page is not for you.")
    return course


@login_required
def staff_assignments(request, course_slug: str):
    """The course's assignments, and a form to offer a published lab with its window."""
    course = _course_or_404(request, course_slug)
    form = AssignmentForm(request.POST or None, course=course)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            assignment = form.save()
            assignment_saved(assignment=assignment, actor=request.user, created=True, changed=[])
        due = timezone.localtime(assignment.due_at)
        messages.success(request, f"{assignment.title} is assigned, due {due:%Y-%m-%d %H:%M %Z}.")
        return redirect("courses:staff_assignments", course_slug=course.slug)
    return render(
        request,
        "courses/staff_assignments.html",
        {"course": course, "form": form, "assignments": course.assignments.select_related("lab")},
    )


@login_required
def staff_assignment_edit(request, course_slug: str, assignment_slug: str):
    """Change an assignment's title, address, window or visibility."""
    course = _course_or_404(request, course_slug)
    assignment = get_object_or_404(course.assignments, slug=assignment_slug)
    form = AssignmentForm(request.POST or None, instance=assignment, course=course)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            changed = changed_fields(Assignment, assignment.pk, AssignmentForm.Meta.fields)
            form.save()
            assignment_saved(assignment=assignment, actor=request.user, created=False, changed=changed(assignment))
        messages.success(request, f"{assignment.title} saved.")
        return redirect("courses:staff_assignments", course_slug=course.slug)
    return render(
        request, "courses/staff_assignment_edit.html", {"course": course, "form": form, "assignment": assignment}
    )


@login_required
def roster(request, course_slug: str):
    """The course's people, and a roster CSV import: upload, see what each line would do, apply."""
    course = _course_or_404(request, course_slug)
    pending = f"roster-upload-{course.pk}"  # the previewed file, until it is applied
    preview = None
    if request.method == "POST" and request.POST.get("action") == "preview":
        upload = request.FILES.get("file")
        if upload is None:
            messages.error(request, "Choose a CSV file to import.")
        elif upload.size > ROSTER_MAX_BYTES:
            messages.error(request, f"The file is {upload.size:,} bytes; a roster may be at most {ROSTER_MAX_BYTES:,}.")
        else:
            data = upload.read(ROSTER_MAX_BYTES + 1)
            try:
                preview = import_roster(course, data, dry_run=True)
            except RosterError as exc:
                messages.error(request, f"{upload.name}: {exc}")
            else:
                request.session[pending] = base64.b64encode(data).decode()
    elif request.method == "POST" and request.POST.get("action") == "apply":
        encoded = request.session.pop(pending, None)
        if encoded is None:
            messages.error(request, "Nothing to apply: upload the file and preview it first.")
        else:
            try:
                done = import_roster(course, base64.b64decode(encoded))
            except RosterError as exc:  # cannot happen for a file that previewed, unless the rules changed
                messages.error(request, str(exc))
            else:
                sent = invite_new_accounts(done)
                audit_import(course, done, actor=request.user)
                level = messages.SUCCESS if done.all_accepted else messages.WARNING
                invited = f" Invitations sent to {len(sent)} new accounts." if sent else ""
                messages.add_message(request, level, f"Roster imported: {done.summary()}.{invited}")
        return redirect("courses:roster", course_slug=course.slug)
    elif request.method == "POST" and request.POST.get("action") == "invite":
        named = request.POST.get("username")
        enrollment = course.enrollments.select_related("user").filter(user__username=named).first()
        user = enrollment.user if enrollment is not None else None
        if user is None or not needs_invitation(user):
            messages.error(request, "That account can sign in already (or has no email address): no invitation sent.")
        else:
            send_invitation(user, course)
            messages.success(request, f"Invitation sent to {user.email}.")
        return redirect("courses:roster", course_slug=course.slug)
    enrollments = list(course.enrollments.select_related("user").order_by("role", "section", "user__username"))
    for enrollment in enrollments:
        enrollment.invitable = needs_invitation(enrollment.user)
    return render(request, "courses/roster.html", {"course": course, "preview": preview, "enrollments": enrollments})


def _assignment_or_404(request, course_slug: str, assignment_slug: str):
    assignment = assignment_for_user(course_slug=course_slug, assignment_slug=assignment_slug, user=request.user)
    if assignment is None:
        raise Http404("No such assignment, or it is not open to you.")
    return assignment


@login_required
@require_safe  # a submission posts to submissions:submit; a POST here is refused, not dropped
def assignment_detail(request, course_slug: str, assignment_slug: str):
    """An assignment's instructions, the student's standing and the submit form (which posts to
    ``submissions:submit``)."""
    return assignment_page(request, _assignment_or_404(request, course_slug, assignment_slug))


def assignment_page(request, assignment: Assignment, *, form: SubmitForm | None = None, status: int = 200):
    """Render the assignment page, with ``form`` (a refused submission's, showing why) or a new one."""
    is_staff = is_course_staff(course=assignment.course, user=request.user)
    standing = None if is_staff else standing_for(assignment=assignment, student=request.user)
    grade = None if is_staff else grade_of(assignment=assignment, student=request.user)
    refusal = standing.refusal if standing is not None else None  # staff may always test an assignment
    # the user's own, and their team's on a team assignment
    mine = owned_submissions(student=request.user, course_id=assignment.course_id).values("pk")
    recent = submissions_for_assignment(assignment=assignment).filter(pk__in=mine)[:10]
    return render(
        request,
        "courses/assignment.html",
        {
            "assignment": assignment,
            "course": assignment.course,
            "lab": assignment.lab,
            "form": form or SubmitForm(assignment=assignment),
            "refusal": refusal,
            "standing": standing,
            "grade": grade,
            "recent": recent,
            "is_staff": is_staff,
            "hidden_tests": hidden_patterns(assignment.test_visibility, assignment.lab.test_visibility),
            "tests_shown_at": reveal_at(assignment, standing.window) if standing else assignment.due_at,
        },
        status=status,
    )


@login_required
def starter_download(request, course_slug: str, assignment_slug: str):
    assignment = _assignment_or_404(request, course_slug, assignment_slug)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in assignment.lab.starter_files.items():
            archive.writestr(f"{assignment.lab.slug}/{name}", text)
        archive.writestr(f"{assignment.lab.slug}/README.md", assignment.lab.readme)
    response = HttpResponse(buffer.getvalue(), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{assignment.lab.slug}-starter.zip"'
    return response


@login_required
def staff_submissions(request, course_slug: str, assignment_slug: str):
    assignment = _assignment_or_404(request, course_slug, assignment_slug)
    if not is_course_staff(course=assignment.course, user=request.user):
        raise Http404("Only the course's staff can see every submission.")
    submissions = submissions_for_assignment(assignment=assignment)
    scope = section_scope(course=assignment.course, user=request.user)
    if scope is not None:
        submissions = submissions.filter(
            student__enrollments__course=assignment.course, student__enrollments__section=scope
        )
    submissions = submissions[:500]
    counts = {state: 0 for state in Job.State.values}
    for submission in submissions:
        jobs = list(submission.jobs.all())
        if jobs:
            counts[jobs[0].state] += 1
    return render(
        request,
        "courses/staff_submissions.html",
        {
            "assignment": assignment,
            "course": assignment.course,
            "submissions": submissions,
            "counts": counts,
            "can_rejudge": can_manage_course(course=assignment.course, user=request.user),
        },
    )


@login_required
def course_settings(request, course_slug: str):
    """The course's title, description, time zone and grace-day bank (instructors and admins)."""
    course = _course_or_404(request, course_slug)
    form = CourseSettingsForm(request.POST or None, instance=course)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            changed = changed_fields(Course, course.pk, CourseSettingsForm.Meta.fields)
            form.save()
            changes = {name: str(getattr(course, name))[:200] for name in changed(course)}
            if changes:
                audit(
                    course=course,
                    actor=request.user,
                    action=Action.COURSE_SETTINGS,
                    summary="Settings changed: " + ", ".join(f"{k} = {v}" for k, v in changes.items()),
                    **changes,
                )
        messages.success(request, "Course settings saved.")
        return redirect("courses:course_settings", course_slug=course.slug)
    return render(request, "courses/course_settings.html", {"course": course, "form": form})


@login_required
def extensions(request, course_slug: str):
    """The course's extensions, a form to grant one (to students, or a whole section), and revoke."""
    course = _course_or_404(request, course_slug, may=is_course_staff)
    scope = section_scope(course=course, user=request.user)
    form = ExtensionForm(request.POST or None, course=course, section=scope)
    if request.method == "POST" and request.POST.get("action") == "revoke":
        extension = Extension.objects.filter(assignment__course=course, pk=request.POST.get("extension")).first()
        if extension is not None and scope is not None:
            in_scope = course.enrollments.filter(user_id=extension.student_id, section=scope).exists()
            extension = extension if in_scope else None
        if extension is None:
            messages.error(request, "That extension does not exist any more.")
        else:
            extension_revoke(extension=extension, revoked_by=request.user)
            messages.success(
                request, f"Extension of {extension.student.username} on {extension.assignment.title} revoked."
            )
        return redirect("courses:extensions", course_slug=course.slug)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        if not data["users"]:
            messages.error(request, f"Section {data['section']} has no students: no extension granted.")
        else:
            granted = extension_grant(
                assignment=data["assignment"],
                students=data["users"],
                due_at=data["due_at"],
                cutoff_at=data["cutoff_at"],
                reason=data["reason"],
                granted_by=request.user,
            )
            due = timezone.localtime(data["due_at"])
            who = ", ".join(e.student.username for e in granted[:10]) + (" and others" if len(granted) > 10 else "")
            messages.success(
                request, f"{data['assignment'].title}: due {due:%Y-%m-%d %H:%M %Z} for {len(granted)} ({who})."
            )
            return redirect("courses:extensions", course_slug=course.slug)
    granted = (
        Extension.objects.filter(assignment__course=course)
        .select_related("assignment", "student", "granted_by")
        .order_by("assignment__due_at", "student__username")
    )
    sections = dict(course.enrollments.values_list("user_id", "section"))
    rows = [
        (e, sections.get(e.student_id, "")) for e in granted if scope is None or sections.get(e.student_id) == scope
    ]
    return render(request, "courses/extensions.html", {"course": course, "form": form, "rows": rows})


@login_required
def audit_log(request, course_slug: str):
    """Every staff action on the course, newest first (instructors and admins)."""
    course = _course_or_404(request, course_slug)
    entries = course.audit.select_related("actor")[:500]
    return render(request, "courses/audit.html", {"course": course, "entries": entries})


@login_required
def gradebook_page(request, course_slug: str):
    """Students x assignments: the final score, late days, overrides marked; sortable, filtered by
    section; instructors also override a score with a reason."""
    course = _course_or_404(request, course_slug, may=is_course_staff)
    manages = can_manage_course(course=course, user=request.user)
    form = OverrideForm(request.POST or None, course=course) if manages else None
    if request.method == "POST":
        if form is None:
            raise Http404("Only the course's instructors override grades.")
        if form.is_valid():
            data = form.cleaned_data
            override_set(
                assignment=data["assignment"],
                student=data["student"],
                score=data["score"],
                reason=data["reason"],
                by=request.user,
            )
            done = "removed" if data["score"] is None else f"set to {data['score']:g}"
            messages.success(request, f"{data['student'].username} on {data['assignment'].title}: {done}.")
            return redirect(request.get_full_path())
    scope = section_scope(course=course, user=request.user)
    section = scope or request.GET.get("section") or None
    book = gradebook(course=course, section=section)
    sort_rows(book, request.GET.get("sort", "username"))
    return render(
        request,
        "courses/gradebook.html",
        {
            "course": course,
            "book": book,
            "section": section,
            "sections": [scope] if scope else student_sections(course=course),
            "sort": request.GET.get("sort", "username"),
            "form": form,
        },
        status=400 if request.method == "POST" else 200,
    )


@login_required
def gradebook_csv(request, course_slug: str):
    """The gradebook as CSV: username,email,section, then one column per assignment."""
    course = _course_or_404(request, course_slug, may=is_course_staff)
    section = section_scope(course=course, user=request.user) or request.GET.get("section") or None
    book = gradebook(course=course, section=section)
    response = HttpResponse(export_csv(book), content_type="text/csv; charset=utf-8")
    suffix = f"-{slugify(section)}" if section else ""
    response["Content-Disposition"] = f'attachment; filename="{course.slug}{suffix}-grades.csv"'
    return response


@login_required
def rejudges(request, course_slug: str):
    """Start a rejudge of an assignment (all, each student's that counts, or the selected
    submissions), and the course's rejudges with their progress (instructors and admins)."""
    course = _course_or_404(request, course_slug)
    if request.method == "POST":
        assignment = course.assignments.filter(slug=request.POST.get("assignment")).first()
        scope = request.POST.get("scope")
        ids = [int(v) for v in request.POST.getlist("submission") if v.isdigit()]
        if assignment is None or scope not in Rejudge.Scope.values:
            messages.error(request, "Choose an assignment and what to rejudge.")
        elif scope == Rejudge.Scope.SELECTED and not ids:
            messages.error(request, "Select the submissions to rejudge on the assignment's submissions page.")
        else:
            try:
                rejudge = rejudge_start(assignment=assignment, by=request.user, scope=scope, submission_ids=ids)
            except RejudgeRefused as exc:
                messages.error(request, str(exc))
            else:
                messages.success(
                    request,
                    f"Rejudge #{rejudge.pk}: {rejudge.items.count()} submissions queued; they run after "
                    "students' own jobs.",
                )
                return redirect("courses:rejudge", course_slug=course.slug, rejudge_id=rejudge.pk)
        return redirect("courses:rejudges", course_slug=course.slug)
    started = Rejudge.objects.filter(assignment__course=course).select_related("assignment", "requested_by")[:50]
    return render(
        request,
        "courses/rejudges.html",
        {
            "course": course,
            "rejudges": [rejudge_progress(rejudge=r) for r in started],
            "assignments": course.assignments.order_by("due_at"),
            "scopes": [c for c in Rejudge.Scope.choices if c[0] != Rejudge.Scope.SELECTED],
        },
    )


@login_required
def rejudge_detail(request, course_slug: str, rejudge_id: int):
    """A rejudge's progress and, as its jobs finish, whose score changed from what to what."""
    course = _course_or_404(request, course_slug)
    rejudge = get_object_or_404(Rejudge.objects.select_related("assignment"), pk=rejudge_id, assignment__course=course)
    return render(request, "courses/rejudge.html", {"course": course, "progress": rejudge_progress(rejudge=rejudge)})


@login_required
@require_POST
def nickname(request, course_slug: str):
    """A student picks (or clears) their leaderboard name in the course."""
    course = get_object_or_404(Course, slug=course_slug, is_active=True)
    enrollment = course.enrollments.filter(user=request.user, role="student").first()
    if enrollment is None:
        raise Http404("Only the course's students have a leaderboard name.")
    try:
        nickname_set(enrollment=enrollment, nickname=request.POST.get("nickname", "")[:200])
    except NicknameRefused as exc:
        messages.error(request, str(exc))
    else:
        shown = enrollment.nickname or request.user.username
        messages.success(request, f"Leaderboards show you as {shown} (the staff still see your username).")
    return redirect("courses:course", course_slug=course.slug)
