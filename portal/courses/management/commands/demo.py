"""``manage.py demo``: a demo course offering every lab, an instructor, a TA and three students in
two sections, and a site admin (a superuser, for Django admin and every course).

It also shows the course side at work: the course gives 3 grace days; `autodiff-late` was due two
days ago and takes grace days until its cutoff; carol handed it in late (spending 2 grace days) and
bob has an extension on it, alice's submission to it is disqualified; `custom_op` has a quota (20 graded
submissions, 6 an hour); `data_pipeline_parallel` is done in teams of up to 3, alice and bob being
team Ada (carol in none); `quantization` hides two tests until the due time (its lab.toml).

``manage.py demo --rejudge`` (which ``make run`` starts once the workers are up) waits until the
late-work demo's submissions are graded, then rejudges `autodiff-late` (each student's submission
that counts) once, so the demo also shows a finished rejudge with its table of scores."""

import secrets
import time
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from labs.catalog import LABS_ROOT
from portal.catalog.models import Lab
from portal.catalog.services import lab_sync_all
from portal.courses.models import Assignment, Course, Enrollment
from portal.courses.policies import LatePolicy
from portal.courses.services import assignment_create, course_create, enrollment_create, extension_grant
from portal.courses.teams import team_set
from portal.submissions.models import Job, Rejudge
from portal.submissions.rejudge import RejudgeRefused, rejudge_start
from portal.submissions.services import submission_create, submission_disqualify

DEMO_COURSE = "aisys-demo"
CAST = [
    ("instructor", Enrollment.Role.INSTRUCTOR, ""),
    ("ta", Enrollment.Role.TA, "A"),
    ("alice", Enrollment.Role.STUDENT, "A"),
    ("bob", Enrollment.Role.STUDENT, "A"),
    ("carol", Enrollment.Role.STUDENT, "B"),
]
LATE_DEMO = "autodiff-late"
ADMIN = "admin"  # the site's superuser: not enrolled, sees every course and Django admin


def logins_file():
    return settings.VAR_DIR / "demo-logins.txt"


class Command(BaseCommand):
    help = "Create (or top up) the demo course with every lab and demo users; prints the logins."

    def add_arguments(self, parser):
        parser.add_argument("--reset-passwords", action="store_true", help="give the demo users new passwords")
        parser.add_argument(
            "--rejudge",
            action="store_true",
            help="once the late-work demo is graded, rejudge it (once); waits up to --wait seconds",
        )
        parser.add_argument("--wait", type=float, default=600.0, help="with --rejudge: how long to wait for grading")

    def handle(self, *args, reset_passwords=False, rejudge=False, wait=600.0, **options):
        if rejudge:
            self.stdout.write(_rejudge_demo(wait=wait))
            return
        self._seed(reset_passwords=reset_passwords)

    @transaction.atomic
    def _seed(self, *, reset_passwords: bool) -> None:
        lab_sync_all()
        course = Course.objects.filter(slug=DEMO_COURSE).first() or course_create(
            slug=DEMO_COURSE,
            title="AI Systems (demo)",
            description="A demo course offering every lab of the catalog. Log in as a student and submit.",
        )
        known = _read_logins()
        people = {}
        for username, role, section in CAST:
            user = User.objects.filter(username=username).first()
            if user is None or reset_passwords or username not in known:
                password = f"{username}-{secrets.token_urlsafe(6)}"
                user = user or User(username=username, email=f"{username}@example.edu")
                user.set_password(password)
                user.save()
                known[username] = password
            enrollment_create(course=course, user=user, role=role)
            course.enrollments.filter(user=user).update(section=section)
            people[username] = user
        admin = User.objects.filter(username=ADMIN).first()
        if admin is None or reset_passwords or ADMIN not in known:
            known[ADMIN] = f"{ADMIN}-{secrets.token_urlsafe(6)}"
            admin = admin or User(username=ADMIN, email=f"{ADMIN}@example.edu")
            admin.set_password(known[ADMIN])
        admin.is_staff = admin.is_superuser = True
        admin.save()
        now = timezone.now()
        offered = set(course.assignments.values_list("lab__slug", flat=True))
        for lab in Lab.objects.filter(is_available=True).exclude(slug__in=offered):
            assignment_create(course=course, lab=lab, opens_at=now - timedelta(days=1), due_at=now + timedelta(days=30))
        course.assignments.filter(lab__slug="custom_op").update(max_submissions=20, submissions_per_hour=6)
        if not course.assignments.filter(slug=LATE_DEMO).exists():
            _late_work_demo(course, people, now)
        team_work = course.assignments.filter(lab__slug="data_pipeline_parallel")
        if team_work.filter(team_size=1).update(team_size=3) and not course.teams.exists():
            team_set(course=course, name="Ada", usernames=["alice", "bob"], by=people["instructor"])
        logins_file().write_text("".join(f"{u} {p}\n" for u, p in known.items()))
        logins_file().chmod(0o600)
        self.stdout.write(f"Demo course '{course.title}' with {course.assignments.count()} lab(s). Logins:")
        for username, role, _ in [*CAST, (ADMIN, "admin", "")]:
            self.stdout.write(f"  {role:<10} {username:<10} password: {known[username]}")


def _rejudge_demo(*, wait: float) -> str:
    """Rejudge the late-work demo's counted submissions once their first grading is over (a
    submission still being graded would be left out of a rejudge); says what it did."""
    late = Assignment.objects.filter(course__slug=DEMO_COURSE, slug=LATE_DEMO).select_related("course", "lab").first()
    if late is None:
        return "no demo course: run manage.py demo first"
    if late.rejudges.exists():
        return f"{LATE_DEMO} was rejudged already"
    waiting = Job.objects.filter(submission__assignment=late, state__in=Job.ACTIVE_STATES)
    deadline = time.monotonic() + wait
    while waiting.exists() or not Job.objects.filter(submission__assignment=late).exists():
        if time.monotonic() >= deadline:
            return f"{LATE_DEMO} is not graded yet (is a grading worker running?); no rejudge"
        time.sleep(2)
    instructor = User.objects.filter(username="instructor").first()
    try:
        rejudge = rejudge_start(assignment=late, by=instructor, scope=Rejudge.Scope.FINAL)
    except RejudgeRefused as exc:
        return f"no rejudge: {exc}"
    return f"rejudge #{rejudge.pk} of {LATE_DEMO}: {rejudge.items.count()} submission(s) queued"


def _read_logins() -> dict[str, str]:
    if not logins_file().exists():
        return {}
    pairs = (line.split(" ", 1) for line in logins_file().read_text().splitlines() if " " in line)
    return {u: p for u, p in pairs}


def _late_work_demo(course: Course, people: dict[str, User], now) -> None:
    """An assignment past its due time under the grace-day policy: carol submitted late (2 grace
    days), bob has an extension, alice's late submission (2 grace days too) is disqualified."""
    if course.grace_days == 0:
        course.grace_days = 3
        course.save(update_fields=["grace_days"])
    lab = Lab.objects.get(slug="autodiff")
    late = assignment_create(
        course=course,
        lab=lab,
        slug=LATE_DEMO,
        title="Autodiff (late-work demo)",
        opens_at=now - timedelta(days=10),
        due_at=now - timedelta(days=1, hours=12),
        cutoff_at=now + timedelta(days=5),
        late_policy=LatePolicy.GRACE,
    )
    solution = LABS_ROOT / lab.slug / "solutions" / "correct" / lab.entry
    submission_create(student=people["carol"], assignment=late, files={lab.entry: solution.read_text()}, source="paste")
    extension_grant(
        assignment=late,
        students=[people["bob"]],
        due_at=now + timedelta(days=3),
        reason="demo: a medical note",
        granted_by=people["instructor"],
    )
    # a result taken out of the leaderboard and the grades, with the reason alice sees
    copied = submission_create(
        student=people["alice"], assignment=late, files={lab.entry: solution.read_text()}, source="paste"
    )
    submission_disqualify(
        submission=copied, by=people["instructor"], reason="demo: identical to another student's submission"
    )
