"""Accounts' writes: which portal account a single sign-on login is, and recording it.

Accounts come from course rosters (portal/courses/roster.py); a provider's login only proves who
the person is at the provider. The first login is matched to a roster account by the provider's
email address (verified, case-insensitive, exactly one account); the provider's subject id is
then recorded, and later logins are matched by it first (docs/security.md, "Single sign-on").
"""

from __future__ import annotations

import logging
import re

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from portal.accounts.models import OidcIdentity

LOGGER = logging.getLogger(__name__)


class OidcLoginRefused(Exception):
    """A single sign-on login that must not log anyone in; the message is for the person at the
    login page and says what to do next."""


def _email_verified_is_false(value: object) -> bool:
    # Some providers send the claim as a string.
    return value is False or (isinstance(value, str) and value.strip().lower() == "false")


def username_for_email(*, email: str, taken: frozenset[str] | set[str] = frozenset()) -> str:
    """A free username made from an email address's local part (``taken``: lower-cased names
    already chosen in this batch, not yet saved)."""
    base = re.sub(r"[^\w.@+-]", "", email.split("@", 1)[0])[:140] or "user"
    username, n = base, 1
    while username.lower() in taken or User.objects.filter(username__iexact=username).exists():
        n += 1
        username = f"{base}{n}"
    return username


def oidc_identity_resolve(
    *,
    issuer: str,
    sub: str,
    email: str | None,
    email_verified: object = None,
    first_name: str = "",
    last_name: str = "",
    provider_name: str,
    create_users: bool = False,
) -> User:
    """The account that the provider's (``issuer``, ``sub``) logs in as, recording the pair on
    the first login; raises ``OidcLoginRefused`` when there is none, or more than one could be.

    Matched by (issuer, sub) first: once recorded, the email the provider sends is not used, so a
    changed address neither locks the student out nor, if it is another account's, logs them in
    as that account. Without a record, the provider's email (required, not marked unverified) must
    be exactly one account's (case-insensitive); a new account is made only if ``create_users``.
    """
    with transaction.atomic():
        identity = OidcIdentity.objects.select_related("user").filter(issuer=issuer, sub=sub).first()
        if identity is not None:
            user = identity.user
            if not user.is_active:
                raise OidcLoginRefused(f"The account {user.username} is disabled: ask your instructor.")
            OidcIdentity.objects.filter(pk=identity.pk).update(last_login_at=timezone.now())
            return user

        email = (email or "").strip()
        if not email:
            raise OidcLoginRefused(
                f"{provider_name} did not tell us your email address, which is how your first login finds "
                "your account: allow the portal to see your email address there and try again."
            )
        if _email_verified_is_false(email_verified):
            raise OidcLoginRefused(
                f"{provider_name} says your email address {email} is not verified: verify it there and try again."
            )
        users = list(User.objects.filter(email__iexact=email).order_by("pk"))
        if len(users) > 1:
            LOGGER.warning(
                "single sign-on refused: %d accounts share the email %s (%s); give each its own address",
                len(users),
                email,
                ", ".join(user.username for user in users),
            )
            raise OidcLoginRefused(
                f"More than one account has the email address {email}, so we cannot tell which one is yours: "
                "ask an admin to give each account its own address (the accounts are named in the portal's log)."
            )
        if not users:
            if not create_users:
                raise OidcLoginRefused(f"No account for {email}: ask your instructor to add you to the course roster.")
            user = User(
                username=username_for_email(email=email),
                email=email,
                first_name=first_name[:150],
                last_name=last_name[:150],
            )
            user.set_unusable_password()
            user.save()
        else:
            user = users[0]
        if user.is_superuser or user.is_staff:
            # an address alone never opens an admin account (a provider may not verify addresses);
            # an admin links theirs in Django admin (OIDC identities), as LTI does for LMS ids
            LOGGER.warning("single sign-on refused: %s is an admin account, not matched by email", user.username)
            raise OidcLoginRefused(
                f"The account for {email} is an admin account, which a first login does not match by email: "
                "an admin links it in Django admin (OIDC identities)."
            )
        if not user.is_active:
            raise OidcLoginRefused(f"The account for {email} is disabled: ask your instructor.")
        if OidcIdentity.objects.filter(user=user, issuer=issuer).exists():
            # The account is already someone's at this provider: a second provider account that now
            # claims the same address (a recycled address, a re-created account) is not let in.
            LOGGER.warning(
                "single sign-on refused: %s is linked to another subject at %s than %s", user.username, issuer, sub
            )
            raise OidcLoginRefused(
                f"The account for {email} is already linked to a different {provider_name} account: ask an admin "
                "to remove the old link (Django admin, OIDC identities) if the account is yours."
            )
        try:
            with transaction.atomic():
                OidcIdentity.objects.create(user=user, issuer=issuer, sub=sub, last_login_at=timezone.now())
        except IntegrityError:  # the same first login, twice at once
            raise OidcLoginRefused(f"Your {provider_name} login was already being linked: try again.")
        return user
