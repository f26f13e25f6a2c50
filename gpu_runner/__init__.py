"""The worker side: the Celery task that grades a job, the launcher, the in-sandbox harness.

No Django here: a job message is self-contained and the result goes back as a message.
"""

from gpu_runner.celery import app

__all__ = ["app"]
