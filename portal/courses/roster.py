"""Roster import: a course's people from a CSV file, planned line by line, then applied.

The file has a header and the columns ``username,email,first_name,last_name,role,section`` (in any order;
``section`` may be left out) and, optionally, ``team`` (a student's team for the course's team
assignments: made if new, empty for none; portal/courses/teams.py), UTF-8 with or without a
byte-order mark, separated by ``,`` or ``;``. ``plan`` reads it and says, for each line, what applying
it would do: create (a new account or a new enrollment), update (what changes), leave unchanged,
or refuse (and why); it writes nothing, so it is also the dry run. ``import_roster`` plans and
carries out the accepted lines in one transaction. Applying the same file twice changes nothing
the second time. New accounts get no usable password: ``invite_new_accounts`` mails each a link to
set one (portal/accounts/invitations.py).

Used by the staff pages and by ``manage.py roster import``. Portal code, trusted; the file is
not (it comes from whoever holds the instructor's login).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from django.contrib.auth.models import User
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction

from portal.accounts.invitations import needs_invitation, send_invitation
from portal.courses.audit import Action, audit
from portal.courses.models import Course, Enrollment
from portal.courses.teams import MAX_NAME as MAX_TEAM_NAME
from portal.courses.teams import team_move, team_of

COLUMNS = ("username", "email", "first_name", "last_name", "role", "section", "team")
REQUIRED = ("username", "email", "role")
MAX_BYTES = 2 * 1024 * 1024  # some 20,000 students' lines
MAX_ROWS = 20_000
ROLES = {choice.value for choice in Enrollment.Role}


class RosterError(Exception):
    """The file as a whole cannot be read (no header, a missing column, too large, not UTF-8)."""


@dataclass
class Line:
    """One line of the file and what applying it does: ``action`` is create, update, unchanged or
    refused; ``changes`` says what an update changes, ``reason`` why a line is refused."""

    number: int  # in the file, the header being line 1
    username: str
    action: str
    changes: list[str] = field(default_factory=list)
    reason: str = ""
    row: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        if self.action == "refused":
            return f"line {self.number}: {self.username or '(no username)'}: refused: {self.reason}"
        detail = f" ({'; '.join(self.changes)})" if self.changes else ""
        return f"line {self.number}: {self.username}: {self.action}{detail}"


@dataclass
class Plan:
    course: Course
    lines: list[Line]

    def count(self, action: str) -> int:
        return sum(1 for line in self.lines if line.action == action)

    @property
    def all_accepted(self) -> bool:
        return self.count("refused") == 0

    def summary(self) -> str:
        return (
            f"created {self.count('create')}, updated {self.count('update')}, "
            f"unchanged {self.count('unchanged')}, refused {self.count('refused')}"
        )


def read_rows(data: bytes) -> list[tuple[int, dict[str, str]]]:
    """The file's lines after the header as ``(line number, {column: value})``; RosterError if the
    file as a whole is unreadable."""
    if len(data) > MAX_BYTES:
        raise RosterError(f"the file is {len(data):,} bytes; a roster may be at most {MAX_BYTES:,}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RosterError(f"the file is not UTF-8 (byte {exc.start}); save it as UTF-8 CSV") from None
    first = text.split("\n", 1)[0]
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        raise RosterError("the file is empty; its first line must name the columns") from None
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise RosterError(
            f"the header lacks {', '.join(missing)}; the first line must name the columns ({','.join(COLUMNS)})"
        )
    rows = []
    for values in reader:
        if reader.line_num - 1 > MAX_ROWS:
            raise RosterError(f"the file has more than {MAX_ROWS:,} lines")
        if not any(value.strip() for value in values):
            continue  # a blank line
        row = {name: (values[i].strip() if i < len(values) else "") for i, name in enumerate(header)}
        rows.append((reader.line_num, row))
    return rows


def plan(course: Course, data: bytes) -> Plan:
    """What importing ``data`` into ``course`` would do, line by line; writes nothing."""
    return plan_rows(course, read_rows(data))


def plan_rows(course: Course, rows: list[tuple[int, dict[str, str]]]) -> Plan:
    """``plan`` for rows already read: ``(line number, {column: value})``."""
    lines: list[Line] = []
    seen_usernames: dict[str, int] = {}
    seen_emails: dict[str, int] = {}
    for number, row in rows:
        line = _plan_line(course, number, row)
        username, email = row.get("username", "").lower(), row.get("email", "").lower()
        if line.action != "refused":
            if username in seen_usernames:
                line = _refused(number, row, f"duplicate row: username also on line {seen_usernames[username]}")
            elif email in seen_emails:
                line = _refused(number, row, f"duplicate row: email also on line {seen_emails[email]}")
            else:
                seen_usernames[username], seen_emails[email] = number, number
        lines.append(line)
    return Plan(course=course, lines=lines)


def _refused(number: int, row: dict[str, str], reason: str) -> Line:
    return Line(number=number, username=row.get("username", ""), action="refused", reason=reason, row=row)


def _plan_line(course: Course, number: int, row: dict[str, str]) -> Line:
    username, email, role = row.get("username", ""), row.get("email", ""), row.get("role", "").lower()
    if not username:
        return _refused(number, row, "no username")
    try:
        UnicodeUsernameValidator()(username)
    except ValidationError:
        return _refused(number, row, f"bad username {username!r}: letters, digits and @ . + - _ only")
    if len(username) > 150:
        return _refused(number, row, "bad username: longer than 150 characters")
    try:
        validate_email(email)
    except ValidationError:
        return _refused(number, row, f"bad email {email!r}")
    if role not in ROLES:
        return _refused(number, row, f"unknown role {role!r}: use one of {', '.join(sorted(ROLES))}")
    for name in ("first_name", "last_name"):
        if len(row.get(name, "")) > 150:
            return _refused(number, row, f"{name} longer than 150 characters")
    if len(row.get("section", "")) > 50:
        return _refused(number, row, "section longer than 50 characters")
    if "team" in row:
        row = {**row, "team": " ".join(row["team"].split())}
        if len(row["team"]) > MAX_TEAM_NAME:
            return _refused(number, row, f"team longer than {MAX_TEAM_NAME} characters")
        if row["team"] and role != Enrollment.Role.STUDENT:
            return _refused(number, row, f"a {role} is in no team: teams are of students")
    row = {**row, "role": role}
    user = User.objects.filter(username=username).first()
    owner = User.objects.filter(email__iexact=email).exclude(username=username).first()
    if owner is not None:
        return _refused(number, row, f"email {email} belongs to another account ({owner.username})")
    if user is None:
        return Line(number=number, username=username, action="create", changes=["new account"], row=row)
    if user.is_superuser:
        return _refused(number, row, "an admin account is not managed by a roster")
    enrollment = Enrollment.objects.filter(course=course, user=user).first()
    changes = _changes(user, enrollment, row)
    if enrollment is None:
        return Line(number=number, username=username, action="create", changes=["enrolled", *changes], row=row)
    return Line(number=number, username=username, action="update" if changes else "unchanged", changes=changes, row=row)


def _changes(user: User, enrollment: Enrollment | None, row: dict[str, str]) -> list[str]:
    changes = []
    for name in ("email", "first_name", "last_name"):
        if name in row and getattr(user, name) != row[name]:
            changes.append(f"{name} {getattr(user, name)!r} -> {row[name]!r}")
    if enrollment is not None:
        if enrollment.role != row["role"]:
            changes.append(f"role {enrollment.role} -> {row['role']}")
        if "section" in row and enrollment.section != row["section"]:
            changes.append(f"section {enrollment.section!r} -> {row['section']!r}")
    if "team" in row:
        team = team_of(course_id=enrollment.course_id, user_id=user.pk) if enrollment is not None else None
        if (team.name if team else "").casefold() != row["team"].casefold():
            changes.append(f"team {team.name if team else ''!r} -> {row['team']!r}")
    return changes


def import_roster(course: Course, data: bytes, *, dry_run: bool = False) -> Plan:
    """Plan ``data`` for ``course`` and, unless ``dry_run``, carry out its accepted lines, in one
    transaction (what is applied is what was planned against the database as it is now)."""
    return import_rows(course, read_rows(data), dry_run=dry_run)


@transaction.atomic
def import_rows(course: Course, rows: list[tuple[int, dict[str, str]]], *, dry_run: bool = False) -> Plan:
    """``import_roster`` for rows already read (a form's one person, say)."""
    roster = plan_rows(course, rows)
    if not dry_run:
        for line in roster.lines:
            if line.action in ("create", "update"):
                _apply(course, line.username, line.row)
    return roster


def invite_new_accounts(roster: Plan) -> list[str]:
    """Mail an invitation to each account an applied ``roster`` created; their email addresses."""
    usernames = [line.username for line in roster.lines if line.action == "create" and "new account" in line.changes]
    sent = []
    for user in User.objects.filter(username__in=usernames).order_by("username"):
        if needs_invitation(user):
            send_invitation(user, roster.course)
            sent.append(user.email)
    return sent


def _apply(course: Course, username: str, row: dict[str, str]) -> None:
    user, created = User.objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()  # until an invitation or single sign-on gives a way in
    for name in ("email", "first_name", "last_name"):
        if name in row:
            setattr(user, name, row[name])
    user.save()
    defaults = {"role": row["role"]}
    if "section" in row:
        defaults["section"] = row["section"]
    Enrollment.objects.update_or_create(course=course, user=user, defaults=defaults)
    if "team" in row:
        team_move(course=course, user=user, name=row["team"])


def audit_import(course: Course, done: Plan, *, actor: User | None, actor_name: str = "(system)") -> None:
    """Put an applied import that changed something, or refused lines, into the course's audit log."""
    if done.all_accepted and not (done.count("create") or done.count("update")):
        return
    audit(
        course=course,
        actor=actor,
        actor_name=actor_name,
        action=Action.ROSTER_IMPORT,
        summary=f"Roster imported: {done.summary()}",
        lines=[line.describe() for line in done.lines if line.action != "unchanged"][:1000],
    )
