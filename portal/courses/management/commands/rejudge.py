"""``manage.py rejudge <course-slug> <assignment-slug> [--only-final]``: grade an assignment's
submissions again with the lab as it is now; the jobs run after students' own jobs. Prints how
many were queued and where to watch the progress and the table of changed scores."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from portal.courses.models import Assignment
from portal.submissions.models import Rejudge
from portal.submissions.rejudge import RejudgeRefused, rejudge_start


class Command(BaseCommand):
    help = "Rejudge an assignment's submissions (all, or each student's that counts with --only-final)."

    def add_arguments(self, parser):
        parser.add_argument("course", help="the course's slug")
        parser.add_argument("assignment", help="the assignment's slug")
        parser.add_argument("--only-final", action="store_true", help="only each student's submission that counts")

    def handle(self, *args, course, assignment, only_final=False, **options):
        found = Assignment.objects.select_related("course", "lab").filter(course__slug=course, slug=assignment).first()
        if found is None:
            raise CommandError(f"no assignment {assignment!r} in a course {course!r}")
        scope = Rejudge.Scope.FINAL if only_final else Rejudge.Scope.ALL
        try:
            rejudge = rejudge_start(assignment=found, by=None, scope=scope)
        except RejudgeRefused as exc:
            raise CommandError(str(exc)) from None
        url = settings.PORTAL_URL.rstrip("/") + reverse("courses:rejudge", args=[course, rejudge.pk])
        self.stdout.write(
            f"rejudge #{rejudge.pk} of {course}/{assignment} against lab version {rejudge.lab_version}: "
            f"{rejudge.items.count()} submissions queued (they run after students' own jobs)\n"
            f"progress and changed scores: {url}"
        )
