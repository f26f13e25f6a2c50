"""``manage.py lti sync-roster <course-slug>``: the course's roster from each linked LMS course
(Names and Roles), printed line by line as ``roster import`` prints a file's.

``manage.py lti push-grades <course-slug> <assignment-slug>``: send every LMS student's final
score on the assignment to the LMS now (what the grade passback task sends), printing each
outcome. Exit status 0 when everything was accepted or sent, 1 otherwise.
"""

from django.core.management.base import BaseCommand, CommandError

from portal.courses.models import Course, Enrollment
from portal.lti.models import LtiUser
from portal.lti.services import LmsUnavailable, LtiRefused, lti_grade_passback, lti_roster_sync


class Command(BaseCommand):
    help = "LTI 1.3: sync a course's roster from the LMS, or push an assignment's grades to it."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        sync = sub.add_parser("sync-roster", help="create and update the course's people from the LMS")
        sync.add_argument("course", help="the course's slug")
        push = sub.add_parser("push-grades", help="send the assignment's final scores to the LMS")
        push.add_argument("course", help="the course's slug")
        push.add_argument("assignment", help="the assignment's slug")

    def handle(self, *args, action, course, **options):
        found = Course.objects.filter(slug=course).first()
        if found is None:
            raise CommandError(f"no course with slug {course!r}")
        ok = self._sync(found) if action == "sync-roster" else self._push(found, options["assignment"])
        if not ok:
            raise SystemExit(1)

    def _sync(self, course: Course) -> bool:
        contexts = list(course.lti_contexts.select_related("platform"))
        if not contexts:
            raise CommandError(f"no LMS course is linked to {course.slug}: launch the portal from the LMS first")
        ok = True
        for context in contexts:
            try:
                done = lti_roster_sync(context=context, actor=None, actor_name="(manage.py lti sync-roster)")
            except (LtiRefused, LmsUnavailable) as exc:
                self.stderr.write(f"{context}: {exc}")
                ok = False
                continue
            for line in done.plan.lines:
                self.stdout.write(line.describe())
            self.stdout.write(f"{context}: {done.summary()}")
            ok = ok and done.plan.all_accepted
        return ok

    def _push(self, course: Course, slug: str) -> bool:
        assignment = course.assignments.filter(slug=slug).first()
        if assignment is None:
            raise CommandError(f"no assignment {slug!r} in {course.slug}")
        if not assignment.lti_resource_links.exists():
            raise CommandError(f"no LMS link leads to {course.slug}/{slug}: link one first (docs/lti.md)")
        platforms = assignment.lti_resource_links.values("platform_id")
        identities = LtiUser.objects.filter(
            platform_id__in=platforms, user__enrollments__course=course, user__enrollments__role=Enrollment.Role.STUDENT
        ).select_related("user")
        ok, counts = True, {}
        for student in sorted({identity.user for identity in identities}, key=lambda user: user.username):
            try:
                results = lti_grade_passback(assignment=assignment, student=student)
            except LmsUnavailable as exc:
                self.stdout.write(f"{student.username}: failed: {exc}")
                counts["failed"] = counts.get("failed", 0) + 1
                ok = False
                continue
            for result in results:
                score = "no grade" if result.score is None else f"{result.score:g}"
                error = f": {result.error}" if result.error else ""
                self.stdout.write(f"{student.username}: {score}: {result.outcome}{error}")
                counts[result.outcome] = counts.get(result.outcome, 0) + 1
                ok = ok and result.outcome != "failed"
        self.stdout.write(", ".join(f"{outcome} {n}" for outcome, n in sorted(counts.items())) or "nobody to send")
        return ok
