"""Invitations (portal/accounts/invitations.py): a new account's single-use, expiring link to set
its password, mailed when a roster creates the account, sent again from the roster page."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.auth.tokens import default_token_generator
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from tests.portal.test_roster import ROSTER

pytestmark = pytest.mark.django_db
NEW_PASSWORD = "a-long-new-pw-4711"


def _import(client, cast) -> None:
    client.force_login(cast["ines"])
    upload = SimpleUploadedFile("roster.csv", ROSTER.encode())
    url = reverse("courses:roster", args=[cast["course"].slug])
    client.post(url, {"action": "preview", "file": upload})
    page = client.post(url, {"action": "apply"}, follow=True).content.decode()
    assert "Invitations sent to 3 new accounts." in page
    client.logout()


def _link(message) -> str:
    found = re.search(re.escape(settings.PORTAL_URL) + r"(/accounts/invitation/\S+/)", message.body)
    assert found, message.body
    return found.group(1)


def test_each_new_account_is_mailed_a_link_that_sets_its_password_once(client, cast, mailoutbox):
    _import(client, cast)
    assert sorted(m.to[0] for m in mailoutbox) == ["ada@uni.edu", "alan@uni.edu", "grace@uni.edu"]
    mail = next(m for m in mailoutbox if m.to == ["ada@uni.edu"])
    assert mail.subject == "Your AISys Labs account for AI Systems"
    assert "Your username is ada." in mail.body
    link = _link(mail)

    form = client.get(link, follow=True)  # Django moves the token out of the address first
    assert "Set your password" in form.content.decode()
    done = client.post(form.redirect_chain[-1][0], {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})
    assert done.status_code == 302 and done.url == reverse("accounts:login")
    assert User.objects.get(username="ada").check_password(NEW_PASSWORD)
    assert client.login(username="ada", password=NEW_PASSWORD)
    client.logout()

    again = client.get(link, follow=True).content.decode()
    assert "This link no longer works" in again


def test_a_link_expires(client, cast, mailoutbox, monkeypatch):
    _import(client, cast)
    link = _link(mailoutbox[0])
    later = default_token_generator._now() + timedelta(seconds=settings.PASSWORD_RESET_TIMEOUT + 60)
    monkeypatch.setattr(default_token_generator, "_now", lambda: later)
    assert "This link no longer works" in client.get(link, follow=True).content.decode()


def test_an_instructor_sends_an_invitation_again_and_a_ta_cannot(client, cast, mailoutbox):
    _import(client, cast)
    url = reverse("courses:roster", args=[cast["course"].slug])
    client.force_login(cast["ines"])
    page = client.get(url).content.decode()
    assert page.count("Send invitation again") == 3  # ada, alan, grace; the cast can sign in
    done = client.post(url, {"action": "invite", "username": "ada"}, follow=True).content.decode()
    assert "Invitation sent to ada@uni.edu." in done and len(mailoutbox) == 4
    refused = client.post(url, {"action": "invite", "username": "alice"}, follow=True).content.decode()
    assert "no invitation sent" in refused and len(mailoutbox) == 4  # alice has a password
    client.force_login(cast["tariq"])
    assert client.post(url, {"action": "invite", "username": "ada"}).status_code == 404
    assert len(mailoutbox) == 4
