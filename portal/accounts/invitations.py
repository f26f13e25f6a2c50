"""Invitations: a new account's single-use, expiring link to set its password, sent by mail.

The link carries Django's password-reset token for the account: it expires after
``PASSWORD_RESET_TIMEOUT`` (``INVITATION_VALID_DAYS``) and stops working once a password is set,
since the token covers the password. Sending again makes a new link. Portal code.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.auth.tokens import default_token_generator
from django.core.mail import send_mail
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from portal.courses.models import Course


def invitation_link(user: User) -> str:
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    return settings.PORTAL_URL + reverse("accounts:invitation", args=[uid, token])


def send_invitation(user: User, course: Course) -> None:
    """Mail ``user`` a link to set their password and reach ``course``."""
    days = settings.PASSWORD_RESET_TIMEOUT / 86400
    name = user.first_name or user.username
    body = (
        f"Hello {name},\n\n"
        f"You have an account on AISys Labs for {course.title}. Your username is {user.username}.\n"
        f"Set your password here (the link works once, for {days:g} days):\n\n"
        f"{invitation_link(user)}\n\n"
        "If the link has expired, ask your instructor to send a new one.\n"
    )
    send_mail(f"Your AISys Labs account for {course.title}", body, None, [user.email])


def needs_invitation(user: User) -> bool:
    """An account that cannot sign in yet: no usable password, and an address to write to."""
    return bool(user.email) and not user.has_usable_password() and user.is_active
