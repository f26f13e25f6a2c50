"""Let the LMS pages named in ``LTI_FRAME_ANCESTORS`` show the portal in their iframe.

Django's clickjacking protection (X-Frame-Options: DENY) forbids every frame; an LMS launch
shows the portal inside the LMS's page. Where LTI_FRAME_ANCESTORS lists the LMS's origins, each
response instead carries a Content-Security-Policy ``frame-ancestors 'self' <origins>``, which
allows those pages and no other. Without the setting nothing changes.

Staff and admin pages (``/admin/``, every ``.../staff/...`` page, the LTI config page) keep
DENY: any author of an LMS page can frame what the LMS may frame, and a framed staff page
could be clicked through (clickjacking) by a logged-in instructor.
"""

from __future__ import annotations

from django.conf import settings

NEVER_FRAMED = ("/admin/", "/lti/config/")


def _never_framed(path: str) -> bool:
    return path.startswith(NEVER_FRAMED) or "/staff/" in path


class LmsFrameAncestorsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if settings.LTI_FRAME_ANCESTORS and not _never_framed(request.path):
            policy = "frame-ancestors 'self' " + " ".join(settings.LTI_FRAME_ANCESTORS)
            if "X-Frame-Options" in response:
                del response["X-Frame-Options"]
            existing = response.get("Content-Security-Policy")
            response["Content-Security-Policy"] = f"{existing}; {policy}" if existing else policy
        return response
