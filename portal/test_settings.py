"""Settings for the test suite: the same as production code paths, on Redis database 9 so a
running ``make run`` (database 0) and the tests never consume each other's jobs."""

import os

os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/9")
os.environ.setdefault("AISYS_CHANNEL_PREFIX", "aisys-test")

from portal.settings import *  # noqa: E402,F403

# Hashing a password the production way (PBKDF2, 1M iterations) took 0.34 s: 2 s of every test's
# set-up, which creates six accounts. Tests check who may log in, not how hard a hash is to crack.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
