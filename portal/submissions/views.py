from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from portal.access import can_manage_course, is_course_staff
from portal.courses.policies import late_penalty_percent
from portal.courses.selectors import assignment_for_user
from portal.courses.views import assignment_page
from portal.submissions.forms import SubmitForm
from portal.submissions.selectors import (
    job_archived_events,
    job_for_viewer,
    job_latest,
    job_queue_position,
    job_snapshot,
    submission_for_viewer,
    submissions_for_student,
    test_view_for,
)
from portal.submissions.services import (
    SubmissionRefused,
    submission_create,
    submission_disqualify,
    submission_mark_final,
)


@login_required
def submission_detail(request, submission_id: int):
    submission = submission_for_viewer(submission_id=submission_id, user=request.user)
    if submission is None:
        raise Http404("No such submission, or it is not yours.")
    job = job_latest(submission=submission)
    view = test_view_for(submission=submission, user=request.user)
    archived = job_archived_events(job_id=job.pk, after=0, view=view) if job.events_archived else []
    timezone.activate(submission.assignment.course.tz)  # the middleware deactivates it after the response
    return render(
        request,
        "submissions/detail.html",
        {
            "submission": submission,
            "assignment": submission.assignment,
            "course": submission.assignment.course,
            "job": job,
            "jobs": list(submission.jobs.all()),
            "queue_position": job_queue_position(job=job),
            "snapshot": job_snapshot(job=job, view=view),
            "summary": view.summary(job.summary),
            "output_tail": "" if view.withholds_output else job.output_tail,
            "output_withheld": view.withholds_output,
            "archived_events": archived,
            "is_staff": is_course_staff(course=submission.assignment.course, user=request.user),
            "late_penalty": late_penalty_percent(submission.assignment, submission.late_days),
            "can_disqualify": can_manage_course(course=submission.assignment.course, user=request.user),
        },
    )


@login_required
@require_POST
def submit(request, course_slug: str, assignment_slug: str):
    """Hand in files for grading; a refusal (window, quota, a bad file) re-renders the assignment
    page with the reason and stores nothing."""
    assignment = assignment_for_user(course_slug=course_slug, assignment_slug=assignment_slug, user=request.user)
    if assignment is None:
        raise Http404("No such assignment, or it is not open to you.")
    form = SubmitForm(request.POST, request.FILES, assignment=assignment)
    if form.is_valid():
        try:
            submission = submission_create(
                student=request.user, assignment=assignment, files=form.decoded, source=form.source
            )
        except SubmissionRefused as exc:
            messages.error(request, str(exc))
        else:
            return redirect("submissions:detail", submission_id=submission.pk)
    return assignment_page(request, assignment, form=form, status=400)


@login_required
def my_submissions(request):
    return render(request, "submissions/mine.html", {"submissions": submissions_for_student(user=request.user)[:200]})


@login_required
def job_status(request, job_id: int):
    job = job_for_viewer(job_id=job_id, user=request.user)
    if job is None:
        return JsonResponse({"error": "no such job, or it is not yours"}, status=404)
    return JsonResponse(job_snapshot(job=job, view=test_view_for(submission=job.submission, user=request.user)))


@login_required
@require_POST
def mark_final(request, submission_id: int):
    """The author marks this submission as the one that counts."""
    submission = submission_for_viewer(submission_id=submission_id, user=request.user)
    if submission is None:
        raise Http404("No such submission, or it is not yours.")
    try:
        submission_mark_final(submission=submission, user=request.user)
    except SubmissionRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Submission #{submission.pk} is the one that counts.")
    return redirect("submissions:detail", submission_id=submission.pk)


@login_required
@require_POST
def disqualify(request, submission_id: int):
    """An instructor takes a result out of the leaderboard and grades (with a reason), or puts it back."""
    submission = submission_for_viewer(submission_id=submission_id, user=request.user)
    if submission is None or not can_manage_course(course=submission.assignment.course, user=request.user):
        raise Http404("No such submission, or you may not disqualify it.")
    reason = request.POST.get("reason", "").strip()
    if request.POST.get("action") == "reinstate":
        submission_disqualify(submission=submission, by=request.user, reason=None)
        messages.success(request, f"Submission #{submission.pk} is reinstated: it ranks and counts again.")
    elif not reason:
        messages.error(request, "Say why: the student sees the reason.")
    else:
        submission_disqualify(submission=submission, by=request.user, reason=reason)
        messages.success(request, f"Submission #{submission.pk} is disqualified; the student sees why.")
    return redirect("submissions:detail", submission_id=submission.pk)
