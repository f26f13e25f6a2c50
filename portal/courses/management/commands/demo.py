"""``manage.py demo``: a demo course offering every lab, an instructor and three students, and a
site admin (a superuser, for Django admin and every course)."""

import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from portal.catalog.models import Lab
from portal.catalog.services import lab_sync_all
from portal.courses.models import Course, Enrollment
from portal.courses.services import assignment_create, course_create, enrollment_create

DEMO_COURSE = "aisys-demo"
CAST = [
    ("instructor", Enrollment.Role.INSTRUCTOR),
    ("alice", Enrollment.Role.STUDENT),
    ("bob", Enrollment.Role.STUDENT),
    ("carol", Enrollment.Role.STUDENT),
]
ADMIN = "admin"  # the site's superuser: not enrolled, sees every course and Django admin


def logins_file():
    return settings.VAR_DIR / "demo-logins.txt"


class Command(BaseCommand):
    help = "Create (or top up) the demo course with every lab and demo users; prints the logins."

    def add_arguments(self, parser):
        parser.add_argument("--reset-passwords", action="store_true", help="give the demo users new passwords")

    @transaction.atomic
    def handle(self, *args, reset_passwords=False, **options):
        lab_sync_all()
        course = Course.objects.filter(slug=DEMO_COURSE).first() or course_create(
            slug=DEMO_COURSE,
            title="AI Systems (demo)",
            description="A demo course offering every lab of the catalog. Log in as a student and submit.",
        )
        known = _read_logins()
        for username, role in CAST:
            user = User.objects.filter(username=username).first()
            if user is None or reset_passwords or username not in known:
                password = f"{username}-{secrets.token_urlsafe(6)}"
                user = user or User(username=username, email=f"{username}@example.edu")
                user.set_password(password)
                user.save()
                known[username] = password
            enrollment_create(course=course, user=user, role=role)
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
        logins_file().write_text("".join(f"{u} {p}\n" for u, p in known.items()))
        logins_file().chmod(0o600)
        self.stdout.write(f"Demo course '{course.title}' with {course.assignments.count()} lab(s). Logins:")
        for username, role in [*CAST, (ADMIN, "admin")]:
            self.stdout.write(f"  {role:<10} {username:<10} password: {known[username]}")


def _read_logins() -> dict[str, str]:
    if not logins_file().exists():
        return {}
    pairs = (line.split(" ", 1) for line in logins_file().read_text().splitlines() if " " in line)
    return {u: p for u, p in pairs}
