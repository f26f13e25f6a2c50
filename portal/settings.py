"""Settings, read from the environment with safe development defaults.

In production (DEBUG=0) the insecure defaults are refused at start-up: see ``_check_production``.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("AISYS_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEV_SECRET_KEY = "dev-insecure-0ZfJm4y2kQ-do-not-use-in-production"
DEBUG = env_bool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY", DEV_SECRET_KEY)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "http://127.0.0.1:8000,http://localhost:8000")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "portal.accounts",
    "portal.catalog",
    "portal.courses",
    "portal.submissions",
    "portal.leaderboards",
    "portal.lti",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "portal.courses.middleware.CourseTimeZoneMiddleware",
    "portal.lti.middleware.LmsFrameAncestorsMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "portal.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.catalog.context_processors.lab_manager",
            ],
        },
    },
]
ASGI_APPLICATION = "portal.asgi.application"
WSGI_APPLICATION = None

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}", conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "0"))
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat share the file: wait for locks instead of failing, and let readers
    # proceed while a writer commits.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not memory: the test suite's real Celery worker and web server are other processes.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "courses:home"
LOGOUT_REDIRECT_URL = "accounts:login"

# Single sign-on (OpenID Connect, mozilla-django-oidc), off unless OIDC_RP_CLIENT_ID is set; every
# variable is described in docs/deployment.md. Accounts still come from rosters: a provider's login
# is matched to one by email, then by the provider's subject id (portal/accounts/oidc.py).
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
OIDC_ENABLED = bool(os.environ.get("OIDC_RP_CLIENT_ID"))
OIDC_PROVIDER_NAME = os.environ.get("OIDC_PROVIDER_NAME", "single sign-on")
if OIDC_ENABLED:
    INSTALLED_APPS.append("mozilla_django_oidc")
    AUTHENTICATION_BACKENDS.append("portal.accounts.oidc.PortalOidcBackend")
    OIDC_RP_CLIENT_ID = os.environ["OIDC_RP_CLIENT_ID"]
    OIDC_RP_CLIENT_SECRET = os.environ.get("OIDC_RP_CLIENT_SECRET", "")
    # The provider's /.well-known/openid-configuration, read at the first login and kept; the
    # endpoints below, where set, win over what it says.
    OIDC_OP_DISCOVERY_URL = os.environ.get("OIDC_OP_DISCOVERY_URL", "")
    OIDC_OP_ISSUER = os.environ.get("OIDC_OP_ISSUER", "")
    OIDC_OP_AUTHORIZATION_ENDPOINT = os.environ.get("OIDC_OP_AUTHORIZATION_ENDPOINT", "")
    OIDC_OP_TOKEN_ENDPOINT = os.environ.get("OIDC_OP_TOKEN_ENDPOINT", "")
    OIDC_OP_USER_ENDPOINT = os.environ.get("OIDC_OP_USER_ENDPOINT", "")
    OIDC_OP_JWKS_ENDPOINT = os.environ.get("OIDC_OP_JWKS_ENDPOINT", "")
    OIDC_RP_SIGN_ALGO = os.environ.get("OIDC_RP_SIGN_ALGO", "RS256")
    OIDC_RP_SCOPES = os.environ.get("OIDC_RP_SCOPES", "openid email profile")
    OIDC_USE_PKCE = env_bool("OIDC_USE_PKCE", True)
    OIDC_CREATE_USERS = env_bool("OIDC_CREATE_USERS", False)
    OIDC_TIMEOUT = float(os.environ.get("OIDC_TIMEOUT", "10"))
    _missing = [
        name
        # the issuer too: without it (and without discovery's) ID tokens' issuer would go unchecked
        for name in (
            "OIDC_OP_ISSUER",
            "OIDC_OP_AUTHORIZATION_ENDPOINT",
            "OIDC_OP_TOKEN_ENDPOINT",
            "OIDC_OP_USER_ENDPOINT",
        )
        + (("OIDC_OP_JWKS_ENDPOINT",) if OIDC_RP_SIGN_ALGO[:2] in ("RS", "ES") else ())
        if not globals()[name]
    ]
    if not OIDC_OP_DISCOVERY_URL and _missing:
        raise ImproperlyConfigured(
            "OIDC_RP_CLIENT_ID is set, so single sign-on is on: set OIDC_OP_DISCOVERY_URL (the provider's "
            f"/.well-known/openid-configuration) or else {', '.join(_missing)} (docs/deployment.md)"
        )
    if OIDC_RP_SIGN_ALGO.startswith("HS") and not OIDC_RP_CLIENT_SECRET:
        raise ImproperlyConfigured(
            f"OIDC_RP_SIGN_ALGO={OIDC_RP_SIGN_ALGO} checks ID tokens with the client secret: set OIDC_RP_CLIENT_SECRET"
        )

# LTI 1.3 (docs/lti.md): platforms are registered in Django admin. Inside an LMS's iframe the portal's
# cookies are third-party: LTI_IFRAME_COOKIES=1 sends them SameSite=None; Secure (HTTPS only), and
# LTI_FRAME_ANCESTORS (the LMS's origins, e.g. https://canvas.uni.edu) lets those pages frame the portal.
LTI_HTTP_TIMEOUT = float(os.environ.get("LTI_HTTP_TIMEOUT", "10"))  # seconds, for every call to an LMS
LTI_FRAME_ANCESTORS = env_list("LTI_FRAME_ANCESTORS", "")
if env_bool("LTI_IFRAME_COOKIES", False):
    SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = "None"
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True

# Mail: invitations to new accounts (docs/course-admin.md). The console backend prints them.
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "AISys Labs <labs@localhost>")
# The portal's address as students reach it, for links in mail sent outside a request.
PORTAL_URL = os.environ.get("PORTAL_URL", "http://127.0.0.1:8000").rstrip("/")
# How long an invitation's link stays valid (it also ends once used: the token covers the password).
PASSWORD_RESET_TIMEOUT = int(float(os.environ.get("INVITATION_VALID_DAYS", "7")) * 86400)

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": os.environ.get("AISYS_CHANNEL_PREFIX", "aisys")},
    }
}

CELERY_BROKER_URL = REDIS_URL

# Submissions: files are small source files; anything bigger is refused before it is stored.
SUBMISSION_MAX_FILE_BYTES = int(os.environ.get("SUBMISSION_MAX_FILE_BYTES", 256 * 1024))
DATA_UPLOAD_MAX_MEMORY_SIZE = 4 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
# Attempts at a job the infrastructure failed (worker lost, grader bug) before giving up.
JOB_MAX_ATTEMPTS = int(os.environ.get("JOB_MAX_ATTEMPTS", "3"))
# How long past its wall-time limit a job may stay dispatched/running before the reaper acts.
JOB_REAPER_GRACE_SECONDS = int(os.environ.get("JOB_REAPER_GRACE_SECONDS", "120"))
# How long a dispatched job may wait in the broker's queue before its message is presumed lost.
JOB_DISPATCH_TIMEOUT_SECONDS = int(os.environ.get("JOB_DISPATCH_TIMEOUT_SECONDS", "3600"))
# Operator cap on any lab's wall-time limit (0: none), e.g. to keep a busy deadline moving.
JOB_MAX_WALL_SECONDS = float(os.environ.get("JOB_MAX_WALL_SECONDS", "0"))
JOB_DISPATCH_INTERVAL_SECONDS = float(os.environ.get("JOB_DISPATCH_INTERVAL_SECONDS", "5"))
# Rejudge jobs of one pool in the broker's queue or running at once (they wait for students' jobs).
REJUDGE_MAX_IN_FLIGHT = int(os.environ.get("REJUDGE_MAX_IN_FLIGHT", "2"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"daphne": {"level": "WARNING"}, "django.channels.server": {"level": "WARNING"}},
}

if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)


def _check_production() -> None:
    if DEBUG:
        return
    if SECRET_KEY == DEV_SECRET_KEY or len(SECRET_KEY) < 32:
        raise ImproperlyConfigured("DEBUG=0 needs a SECRET_KEY of at least 32 random characters (set SECRET_KEY)")
    if "*" in ALLOWED_HOSTS:
        raise ImproperlyConfigured("DEBUG=0 refuses ALLOWED_HOSTS='*'; list the portal's host names")
    if globals().get("SESSION_COOKIE_SAMESITE") == "None" and not globals().get("SESSION_COOKIE_SECURE"):
        raise ImproperlyConfigured(
            "LTI_IFRAME_COOKIES=1 needs secure cookies (browsers drop SameSite=None cookies without Secure): "
            "serve the portal over HTTPS and unset SECURE_COOKIES=0 (docs/lti.md)"
        )


_check_production()
