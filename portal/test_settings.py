"""Settings for the test suite: the same as production code paths, on Redis database 9 so a
running ``make run`` (database 0) and the tests never consume each other's jobs."""

import os

os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/9")
os.environ.setdefault("AISYS_CHANNEL_PREFIX", "aisys-test")

from portal.settings import *  # noqa: E402,F403
