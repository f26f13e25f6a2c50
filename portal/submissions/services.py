"""Writes on submissions and jobs: create, dispatch, record, retry, reap.

The job state machine of ARCHITECTURE.md lives here (``job_transition``); every transition is
persisted, and every side effect (enqueueing, websocket pushes) fires after commit.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import RedisError

from labs.protocol import JobMessage, JobResult, ProtocolError, Task, Verdict
from portal.access import course_role
from portal.celery import app as celery_app
from portal.courses import policies
from portal.courses.audit import Action as AuditAction
from portal.courses.audit import audit
from portal.courses.models import Assignment, Enrollment, Team
from portal.leaderboards.services import leaderboard_rebuild, leaderboard_record_job
from portal.lti.services import lti_grade_changed
from portal.submissions import streams
from portal.submissions.models import Job, JobEvent, Submission, SubmissionFile
from portal.submissions.standing import (
    extension_of,
    standing_for,
    submission_owner_ids,
    team_members,
    windows_by_submission,
)

log = logging.getLogger(__name__)
State = Job.State

ALLOWED_TRANSITIONS = {
    State.QUEUED: {State.DISPATCHED, State.CANCELLED, *Job.FINAL_STATES},
    State.DISPATCHED: {State.QUEUED, State.RUNNING, *Job.FINAL_STATES},
    State.RUNNING: set(Job.FINAL_STATES),
}


class SubmissionRefused(Exception):
    """The submission cannot be accepted; the message tells the student why and what to do."""


class JobStateError(Exception):
    pass


def check_submission_files(*, assignment: Assignment, files: dict[str, bytes]) -> dict[str, str]:
    """Validate uploaded or pasted files and decode them; raises SubmissionRefused naming the problem."""
    lab = assignment.lab
    if not files:
        raise SubmissionRefused(f"Nothing was submitted: upload {lab.entry} or paste its contents.")
    limit = min(lab.max_file_bytes, settings.SUBMISSION_MAX_FILE_BYTES)
    decoded = {}
    for name, content in files.items():
        if name not in lab.allowed_files:
            raise SubmissionRefused(
                f"'{name}' is not a file this lab accepts; name your file {' or '.join(lab.allowed_files)}."
            )
        if len(content) > limit:
            raise SubmissionRefused(
                f"{name} is {len(content):,} bytes; the limit is {limit:,} bytes. Submit source code only "
                "(no data or model weights)."
            )
        if not content.strip():
            raise SubmissionRefused(f"{name} is empty.")
        try:
            decoded[name] = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SubmissionRefused(
                f"{name} is not UTF-8 text (byte {exc.start} cannot be decoded); save it as UTF-8 and retry."
            ) from None
        if "\x00" in decoded[name]:
            raise SubmissionRefused(f"{name} contains NUL bytes; submit a Python source file.")
    if lab.entry not in decoded:
        raise SubmissionRefused(f"{lab.entry} is required: it is the module the grader imports.")
    return decoded


@transaction.atomic
def submission_create(
    *, student: User, assignment: Assignment, files: dict[str, str], source: str = Submission.Source.UPLOAD
) -> Submission:
    """Store the submission and its first job, then dispatch the job after commit; raises
    SubmissionRefused (storing nothing) when the window, late policy or quota refuses it.

    The student's enrollment row (on a team assignment, their team's row) is locked first, so two
    submissions at once cannot both take the last one of a quota. If the broker is down the job
    simply stays queued; the sweeper dispatches it later.
    """
    role = course_role(course=assignment.course, user=student)
    if role is None:
        raise SubmissionRefused("You are not enrolled in this course.")
    team = None
    if role == "student":  # staff may always test an assignment: windows and quotas are the students'
        team, _ = team_members(assignment=assignment, student=student)
        if team is not None:  # the team's quota: two members submitting at once take turns
            Team.objects.select_for_update().filter(pk=team.pk).first()
        else:
            Enrollment.objects.select_for_update().filter(course_id=assignment.course_id, user=student).first()
        standing = standing_for(assignment=assignment, student=student)
        if standing.refusal is not None:
            raise SubmissionRefused(standing.refusal)
        late_days, team = standing.acceptance.late_days, standing.team
    else:
        late_days = policies.days_late(timezone.now(), assignment.due_at)
    submission = Submission.objects.create(
        assignment=assignment,
        student=student,
        team=team,
        source=source,
        is_late=late_days > 0,
        late_days=late_days,
    )
    SubmissionFile.objects.bulk_create(
        SubmissionFile(submission=submission, name=name, content=text, size=len(text.encode()))
        for name, text in files.items()
    )
    job_create(submission=submission)
    return submission


def job_create(*, submission: Submission, attempt: int = 1, kind: str = Job.Kind.SUBMISSION) -> Job:
    """A new grading of the submission: dispatched after commit, or, for a rejudge, by the sweeper
    once no submission of its pool is waiting (``jobs_dispatch_queued``)."""
    lab = submission.assignment.lab
    job = Job.objects.create(
        submission=submission,
        attempt=attempt,
        kind=kind,
        seed=secrets.randbits(62),
        resource_class=lab.resource_class,
        lab_version=lab.version,
    )
    if kind == Job.Kind.SUBMISSION:
        transaction.on_commit(lambda: job_dispatch(job_id=job.pk))
    return job


def job_transition(*, job: Job, to: str, **fields) -> Job:
    """Move a locked job to state ``to``, persisting ``fields`` with it; refuses illegal moves."""
    if to not in ALLOWED_TRANSITIONS.get(job.state, set()):
        raise JobStateError(f"job {job.pk}: {job.state} -> {to} is not a legal transition")
    job.state = to
    for name, value in fields.items():
        setattr(job, name, value)
    job.save(update_fields=["state", *fields])
    return job


def job_message(*, job: Job) -> JobMessage:
    """The self-contained message a grading worker needs: no database access on the worker."""
    submission = job.submission
    lab = submission.assignment.lab
    return JobMessage(
        job_id=job.pk,
        lab_slug=lab.slug,
        lab_version=job.lab_version,
        files={f.name: f.content for f in submission.files.all()},
        limits=_job_limits(lab.limits),
        seed=job.seed,
        owner=f"user-{submission.student_id}",  # whose earlier builds this job may reuse
        events_stream=job.events_stream,
        resource_class=job.resource_class,
        dispatched_at=timezone.now().timestamp(),
    )


def _job_limits(limits: dict) -> dict:
    """The lab's limits, with the wall time capped by the operator's JOB_MAX_WALL_SECONDS, if set."""
    cap = settings.JOB_MAX_WALL_SECONDS
    if cap and float(limits.get("wall_seconds", cap)) > cap:
        return {**limits, "wall_seconds": cap}
    return dict(limits)


def job_dispatch(*, job_id: int) -> bool:
    """Send a queued job to its workers' queue. Returns False (job stays queued) if the broker is down."""
    with transaction.atomic():
        job = Job.objects.select_for_update().select_related("submission__assignment__lab").filter(pk=job_id).first()
        if job is None or job.state != State.QUEUED:
            return False
        message = job_message(job=job).to_dict()
        try:
            celery_app.send_task(
                Task.RUN_JOB,
                args=[message],
                queue=job.resource_class,
                link=celery_app.signature(Task.RECORD_JOB_RESULT, kwargs={"job_id": job.pk}, queue="portal"),
                retry=False,
            )
        except (BrokerError, RedisError, OSError) as exc:
            log.warning("job %s stays queued: the broker is unreachable (%s)", job.pk, exc)
            return False
        job_transition(job=job, to=State.DISPATCHED, dispatched_at=timezone.now())
    _publish_portal_status(job)
    return True


def jobs_dispatch_queued(*, limit: int = 200) -> int:
    """Dispatch queued jobs, oldest first; stops at the first broker failure. Returns how many went.

    Submissions' jobs go first. A pool's rejudge jobs go only when none of its submissions' jobs
    waits (queued or in the broker's queue), and at most REJUDGE_MAX_IN_FLIGHT at a time, so a
    rejudge of hundreds never stands in the broker's queue ahead of a student's submission.
    """
    queued = Job.objects.filter(state=State.QUEUED)
    own = queued.filter(kind=Job.Kind.SUBMISSION).order_by("created_at").values_list("pk", flat=True)[:limit]
    sent, broker_down = _dispatch_each(list(own))
    if broker_down:
        return sent
    waiting = Job.objects.filter(kind=Job.Kind.SUBMISSION, state__in=(State.QUEUED, State.DISPATCHED))
    in_flight = Job.objects.filter(kind=Job.Kind.REJUDGE, state__in=(State.DISPATCHED, State.RUNNING))
    for pool in queued.filter(kind=Job.Kind.REJUDGE).values_list("resource_class", flat=True).distinct():
        if waiting.filter(resource_class=pool).exists():
            continue
        room = settings.REJUDGE_MAX_IN_FLIGHT - in_flight.filter(resource_class=pool).count()
        if room <= 0:
            continue
        rejudges = queued.filter(kind=Job.Kind.REJUDGE, resource_class=pool).order_by("pk")
        more, broker_down = _dispatch_each(list(rejudges.values_list("pk", flat=True)[:room]))
        sent += more
        if broker_down:
            break
    return sent


def _dispatch_each(job_ids: list[int]) -> tuple[int, bool]:
    """Dispatch the jobs in order: (how many went, whether the broker was found down)."""
    sent = 0
    for job_id in job_ids:
        if not job_dispatch(job_id=job_id):
            if Job.objects.filter(pk=job_id, state=State.QUEUED).exists():
                return sent, True  # the broker is down: try again on the next sweep
            continue
        sent += 1
    return sent, False


def job_mark_started(*, job_id: int, worker: str, started_at: float) -> None:
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.state not in (State.QUEUED, State.DISPATCHED):
            return  # already finished (messages may arrive out of order) or unknown
        job_transition(
            job=job, to=State.RUNNING, worker=worker[:200], started_at=datetime.fromtimestamp(started_at, tz=UTC)
        )


def job_record_result(*, job_id: int, result: dict) -> Job | None:
    """Persist a worker's result; idempotent: a job that is already final is left as it is.

    A result that does not follow the protocol is recorded as an infrastructure error (so the job
    is retried, boundedly) with the reason in its summary, never stored half-read.
    """
    try:
        parsed = JobResult.from_dict(result)
    except ProtocolError as exc:
        log.error("job %s: the worker's result is malformed: %s", job_id, exc)
        parsed = JobResult(
            job_id=job_id,
            verdict=Verdict.ERROR,
            reason="bad_result",
            score=0.0,
            metric=None,
            summary=f"The grader's result could not be read (not your fault; the job is retried): {exc}",
        )
    verdict = str(parsed.verdict)
    with transaction.atomic():
        job = Job.objects.select_for_update().select_related("submission__assignment").filter(pk=job_id).first()
        if job is None or job.is_final:
            return job
        now = timezone.now()
        job_transition(
            job=job,
            to=verdict,
            finished_at=now,
            recorded_at=now,
            score=parsed.score,
            metric=parsed.metric,
            reason=parsed.reason[:40],
            summary=parsed.summary[:5000],
            output_tail=parsed.output_tail[-8192:],
            worker=(parsed.worker or job.worker)[:200],
            result=parsed.to_dict(),
        )
        job_events_archive(job=job)
        submission = job.submission
        if verdict == State.ERROR:
            job_retry(job=job)
        elif job.kind == Job.Kind.REJUDGE:  # the new score replaces the submission's old one, up or down
            leaderboard_rebuild(
                assignment=submission.assignment, student_id=submission.student_id, team_id=submission.team_id
            )
            grade_changed(submission=submission)
        else:
            leaderboard_record_job(job=job)
            grade_changed(submission=submission)
    _publish_portal_status(job)
    return job


def grade_changed(*, submission: Submission) -> None:
    """Its author's (a team's: each member's) final grade may have changed: tell the LMS, where the
    assignment is linked to one (portal/lti; after commit, and nothing at all where it is not)."""
    for student_id in submission_owner_ids(submission=submission):
        lti_grade_changed(assignment_id=submission.assignment_id, student_id=student_id)


def job_retry(*, job: Job) -> Job | None:
    """Grade again after an infrastructure failure, a bounded number of times."""
    if job.attempt >= settings.JOB_MAX_ATTEMPTS:
        log.error("job %s: giving up after %s attempts", job.pk, job.attempt)
        return None
    return job_create(submission=job.submission, attempt=job.attempt + 1, kind=job.kind)


def job_events_archive(*, job: Job) -> int:
    """Copy the job's stream into the database (idempotent) and let the stream expire."""
    try:
        events = streams.read_all(job.events_stream)
        streams.sync_client().expire(job.events_stream, streams.ARCHIVED_STREAM_TTL_SECONDS)
    except RedisError as exc:
        log.warning("job %s: events not archived, Redis unreachable (%s); the sweeper retries", job.pk, exc)
        return 0
    JobEvent.objects.bulk_create(
        [JobEvent(job=job, seq=e["seq"], type=e["type"], ts=e["ts"], data=e["data"]) for e in events],
        ignore_conflicts=True,
    )
    Job.objects.filter(pk=job.pk).update(events_archived=True)
    job.events_archived = True
    return len(events)


def jobs_reap(*, now: datetime | None = None) -> int:
    """Error out, and so retry, jobs that can no longer finish on their own.

    A running job whose result has not come back within its wall time plus grace lost its worker.
    A dispatched job merely waits in the broker's queue, which can be long at a deadline, so it is
    given up on only after JOB_DISPATCH_TIMEOUT_SECONDS (its message was lost, e.g. Redis restarted
    without persistence).
    """
    now = now or timezone.now()
    reaped = 0
    grace = timedelta(seconds=settings.JOB_REAPER_GRACE_SECONDS)
    running = Job.objects.filter(state=State.RUNNING).select_related("submission__assignment__lab")
    for job in running:
        wall = timedelta(seconds=float(_job_limits(job.submission.assignment.lab.limits).get("wall_seconds", 60)))
        if job.started_at + wall + grace < now:
            reaped += _job_give_up(job, "The worker grading this job went silent (not your fault); it is graded again.")
    lost_before = now - timedelta(seconds=settings.JOB_DISPATCH_TIMEOUT_SECONDS)
    for job in Job.objects.filter(state=State.DISPATCHED, dispatched_at__lt=lost_before):
        reaped += _job_give_up(job, "No worker picked this job up in time (not your fault); it is graded again.")
    return reaped


def _job_give_up(job: Job, summary: str) -> int:
    result = JobResult(
        job_id=job.pk, verdict=Verdict.ERROR, reason="worker_lost", score=0.0, metric=None, summary=summary
    )
    return int(job_record_result(job_id=job.pk, result=result.to_dict()) is not None)


def jobs_archive_pending() -> int:
    """Archive the events of final jobs whose archive failed earlier (Redis was away)."""
    done = 0
    for job in Job.objects.filter(state__in=Job.FINAL_STATES, events_archived=False).exclude(result=None)[:100]:
        if job_events_archive(job=job):
            done += 1
    return done


def _publish_portal_status(job: Job) -> None:
    """Tell live viewers of a job about a transition the worker cannot know (queued, dispatched, recorded)."""

    def send() -> None:
        try:
            async_to_sync(get_channel_layer().group_send)(
                f"job_{job.pk}", {"type": "job.state", "state": job.state, "job_id": job.pk}
            )
        except Exception as exc:  # noqa: BLE001 - a push is best effort; the page also polls the state
            log.warning("job %s: state push failed (%s)", job.pk, exc)

    transaction.on_commit(send)


def submissions_refresh_lateness(*, assignment: Assignment, student_ids: list[int] | None = None) -> int:
    """Recompute the late days of an assignment's submissions after a due time moved (an extension
    granted or revoked, the assignment's due time edited). Returns how many changed."""
    windows = windows_by_submission(assignment=assignment)
    default = policies.window_for(assignment)
    submissions = Submission.objects.filter(assignment=assignment)
    if student_ids is not None:  # theirs, and their teams' (a member's extension covers the team)
        submissions = submissions.filter(Q(student_id__in=student_ids) | Q(team__members__user_id__in=student_ids))
    changed = []
    fields = ("pk", "assignment_id", "student_id", "team_id", "created_at", "late_days", "is_late")
    for submission in submissions.distinct().only(*fields):
        days = policies.days_late(submission.created_at, windows.get(submission.pk, default).due_at)
        if days != submission.late_days:
            submission.late_days, submission.is_late = days, days > 0
            changed.append(submission)
    Submission.objects.bulk_update(changed, ["late_days", "is_late"])
    for submission in changed:  # its late penalty, so its owners' final grade, may have moved
        grade_changed(submission=submission)
    return len(changed)


@transaction.atomic
def submission_mark_final(*, submission: Submission, user: User, now: datetime | None = None) -> None:
    """The student picks the submission that counts (assignments that count the marked one), while
    their window is open; it replaces their earlier mark."""
    assignment = submission.assignment
    team, members = team_members(assignment=assignment, student=user)
    if submission.student_id != user.pk and (team is None or submission.team_id != team.pk):
        raise SubmissionRefused("Only its author (or their team) marks a submission as final.")
    if assignment.counts != policies.Counts.MARKED:
        raise SubmissionRefused(
            f"This assignment counts your {assignment.counts} submission; there is nothing to mark."
        )
    now = now or timezone.now()
    window = policies.window_for(assignment, extension_of(assignment=assignment, student_ids=members))
    closes = window.closes_at(assignment.late_policy)
    if closes is not None and now > closes:
        raise SubmissionRefused(
            f"Submissions closed on {assignment.course.local(closes)}; the submission that counts is fixed."
        )
    own = Submission.objects.filter(team=team) if team else Submission.objects.filter(student=user, team=None)
    own.filter(assignment=assignment, marked_final=True).update(marked_final=False)
    Submission.objects.filter(pk=submission.pk).update(marked_final=True)
    submission.marked_final = True
    grade_changed(submission=submission)


@transaction.atomic
def submission_disqualify(*, submission: Submission, by: User, reason: str | None) -> None:
    """Take a result out of the leaderboard and the grades, with a reason the student sees (the
    submission and its gradings stay on record); ``reason`` None reinstates it. Audited."""
    was = submission.disqualified_reason
    fields = {"disqualified_reason": (reason or "")[:200], "disqualified_by": by if reason else None}
    fields["disqualified_at"] = timezone.now() if reason else None
    Submission.objects.filter(pk=submission.pk).update(**fields)
    submission.refresh_from_db()
    assignment, who = submission.assignment, submission.student.username
    leaderboard_rebuild(assignment=assignment, student_id=submission.student_id, team_id=submission.team_id)
    grade_changed(submission=submission)
    done = f"disqualified: {reason}" if reason else f"reinstated (was: {was})"
    audit(
        course=assignment.course,
        actor=by,
        action=AuditAction.DISQUALIFY,
        summary=f"{assignment.title}: #{submission.pk} of {who} {done}",
        assignment=assignment.slug,
        submission=submission.pk,
        student=who,
        disqualified=reason is not None,
        reason=reason or was,
    )
