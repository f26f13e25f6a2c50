from django.contrib import admin  # noqa: F401 - users are managed by django.contrib.auth's admin
