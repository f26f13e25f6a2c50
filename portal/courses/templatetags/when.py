"""``{{ time|when }}``: a time in the active (the course's) time zone, marked up so that
static/js/localtime.js can add the reader's own local time beside it when it differs."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.utils import timezone
from django.utils.html import format_html

register = template.Library()


@register.filter
def when(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M %Z"):
    if value is None:
        return ""
    local = timezone.localtime(value)
    return format_html('<time class="when" datetime="{}">{}</time>', value.isoformat(), local.strftime(fmt))
