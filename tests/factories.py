"""factory_boy factories; data is set up through services where a service exists."""

from datetime import timedelta

import factory
from django.contrib.auth.models import User
from django.utils import timezone

from portal.courses.models import Course


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.edu")
    password = factory.django.Password("pw-for-tests-1")


class CourseFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Course
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"course-{n}")
    title = factory.LazyAttribute(lambda c: f"Course {c.slug}")


def due_in(days: float = 7):
    return timezone.now() + timedelta(days=days)
