"""The course's audit log: every staff action that changes what students get, with who and why."""

from __future__ import annotations

from django.contrib.auth.models import User

from portal.courses.models import AuditEntry, Course

Action = AuditEntry.Action


def audit(
    *, course: Course, actor: User | None, action: str, summary: str, actor_name: str = "(system)", **data
) -> AuditEntry:
    """Record a staff action; ``data`` is what a later reader needs to see what exactly changed.
    ``actor_name`` names an actor without an account (the command line)."""
    return AuditEntry.objects.create(
        course=course,
        actor=actor,
        actor_name=actor.username if actor is not None else actor_name,
        action=action,
        summary=summary[:500],
        data=data,
    )
