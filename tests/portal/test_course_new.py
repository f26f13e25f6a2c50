"""A site admin creates a course and names its first instructor from the staff pages."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portal.courses.models import Course, Enrollment
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
URL = reverse("courses:course_new")


@pytest.fixture
def admin(db):
    return UserFactory(username="root", is_superuser=True)


def test_an_admin_creates_a_course_with_a_new_instructor_who_is_invited(client, admin, mailoutbox):
    client.force_login(admin)
    assert 'href="/staff/courses/new/"' in client.get(reverse("courses:home")).content.decode()
    data = {"slug": "sys-27", "title": "Systems 2027", "instructor_username": "prof", "instructor_email": "p@uni.edu"}
    done = client.post(URL, data, follow=True).content.decode()
    assert "Course Systems 2027 created. An invitation went to p@uni.edu." in done
    enrollment = Enrollment.objects.get(course__slug="sys-27")
    assert (enrollment.user.username, enrollment.role) == ("prof", "instructor")
    assert [m.to for m in mailoutbox] == [["p@uni.edu"]]


def test_an_existing_account_is_named_instructor_without_mail(client, admin, cast, mailoutbox):
    client.force_login(admin)
    client.post(URL, {"slug": "sys-28", "title": "Systems 2028", "instructor_username": "ines"})
    assert Enrollment.objects.get(course__slug="sys-28").user == cast["ines"]
    assert mailoutbox == []


def test_a_refused_instructor_creates_no_course(client, admin):
    client.force_login(admin)
    page = client.post(URL, {"slug": "sys-29", "title": "Systems 2029", "instructor_username": "new"}).content.decode()
    assert "new: bad email" in page
    assert not Course.objects.filter(slug="sys-29").exists()


def test_only_site_admins_create_courses(client, cast):
    client.force_login(cast["ines"])
    assert client.get(URL).status_code == 404
    assert client.post(URL, {"slug": "x", "title": "X"}).status_code == 404
    assert not Course.objects.filter(slug="x").exists()
    assert "New course" not in client.get(reverse("courses:home")).content.decode()
