from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import render
from django.utils import timezone

from portal.courses.policies import late_penalty_percent
from portal.courses.selectors import is_course_staff
from portal.submissions.selectors import (
    job_for_viewer,
    job_latest,
    job_queue_position,
    job_snapshot,
    submission_for_viewer,
    submissions_for_student,
)


@login_required
def submission_detail(request, submission_id: int):
    submission = submission_for_viewer(submission_id=submission_id, user=request.user)
    if submission is None:
        raise Http404("No such submission, or it is not yours.")
    job = job_latest(submission=submission)
    archived = list(job.events.order_by("seq").values("seq", "type", "ts", "data")) if job.events_archived else []
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
            "snapshot": job_snapshot(job=job),
            "archived_events": archived,
            "is_staff": is_course_staff(course=submission.assignment.course, user=request.user),
            "late_penalty": late_penalty_percent(submission.assignment, submission.late_days),
        },
    )


@login_required
def my_submissions(request):
    return render(request, "submissions/mine.html", {"submissions": submissions_for_student(user=request.user)[:200]})


@login_required
def job_status(request, job_id: int):
    job = job_for_viewer(job_id=job_id, user=request.user)
    if job is None:
        return JsonResponse({"error": "no such job, or it is not yours"}, status=404)
    return JsonResponse(job_snapshot(job=job))
