"""LTI's tasks on the portal queue (the portal app's default queue, as for portal/submissions/tasks.py):
thin wrappers over services, idempotent."""

from __future__ import annotations

import logging

from celery import shared_task
from django.contrib.auth.models import User

from portal.courses.models import Assignment
from portal.lti import services

LOGGER = logging.getLogger(__name__)

GRADE_PASSBACK = "portal.lti.grade_passback"
# An LMS that is away is tried again after 1, 2, 4, 8 and 16 minutes, then left: the failure is
# on the LtiGradePassback row, and ``manage.py lti push-grades`` sends what is owed.
PASSBACK_MAX_RETRIES = 5
PASSBACK_FIRST_DELAY_SECONDS = 60


@shared_task(name=GRADE_PASSBACK, bind=True, max_retries=PASSBACK_MAX_RETRIES)
def grade_passback(self, *, assignment_id: int, student_id: int) -> list[dict]:
    """Send a student's final score on an assignment to the LMS (``services.lti_grade_passback``);
    sending it twice sends it once."""
    assignment = Assignment.objects.select_related("course").filter(pk=assignment_id).first()
    student = User.objects.filter(pk=student_id).first()
    if assignment is None or student is None:
        return []  # deleted since: nothing is owed
    try:
        results = services.lti_grade_passback(assignment=assignment, student=student)
    except services.LmsUnavailable as exc:
        if self.request.retries >= self.max_retries:
            LOGGER.warning("LTI grade passback given up after %d tries: %s", self.request.retries + 1, exc)
            return [{"outcome": "failed", "error": str(exc)}]
        raise self.retry(exc=exc, countdown=PASSBACK_FIRST_DELAY_SECONDS * 2**self.request.retries)
    return [{"resource_link_id": r.resource_link_id, "outcome": r.outcome, "score": r.score} for r in results]
