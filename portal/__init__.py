"""The web portal: a Django ASGI project with Channels. Never imports gpu_runner."""

from portal.celery import app as celery_app

__all__ = ["celery_app"]
