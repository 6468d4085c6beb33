"""The one settings module. Every value comes from the environment (see .env.example).

With neither DATABASE_URL nor REDIS_URL set, the app runs embedded: SQLite and a filesystem
Celery broker under VAR_DIR, no servers to install. Setting them switches to PostgreSQL and
Redis; the code path is the same.
"""

import os
from pathlib import Path

import environ

from annotation import task_names as annotation_tasks
from labeling import task_names

from .embedded import filesystem_broker_options, secret_key_from, sqlite_database

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# Variables already in the environment win over the file.
environ.Env.read_env(env("ENV_FILE", default=str(BASE_DIR / ".env")), overwrite=False)

VAR_DIR = Path(env("VAR_DIR", default=str(BASE_DIR / "var")))

DEBUG = env.bool("DEBUG", default=False)
# Generated once and kept under VAR_DIR when not given: sessions survive restarts and the
# pseudonymous annotator ids in exports stay stable.
SECRET_KEY = env("SECRET_KEY", default=None) or secret_key_from(VAR_DIR / "secret_key")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# HTTPS: one switch for the secure defaults, each still settable on its own.
HTTPS = env.bool("HTTPS", default=False)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=HTTPS)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=HTTPS)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=HTTPS)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=HTTPS)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto.
if env.bool("TRUST_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # probes speak plain HTTP inside the network
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "annotation",
    "labeling",
]

MIDDLEWARE = [
    "feedback_app.request_id.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "feedback_app.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

# Script, style and media only from our own origin (feedback_app/csp.py). The API docs page
# of drf-spectacular inlines its start-up script and style, so it alone allows inline ones;
# it loads nothing from another origin either.
CONTENT_SECURITY_POLICY = env(
    "CONTENT_SECURITY_POLICY",
    default="default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'; "
    "form-action 'self'",
)
CONTENT_SECURITY_POLICY_BY_PATH = {
    "/api/docs/": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'self'; frame-ancestors 'none'; form-action 'self'",
}

ROOT_URLCONF = "feedback_app.urls"
WSGI_APPLICATION = "feedback_app.wsgi.application"
ASGI_APPLICATION = "feedback_app.asgi.application"

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
            ],
        },
    },
]

EMBEDDED_DATABASE = "DATABASE_URL" not in os.environ
if EMBEDDED_DATABASE:
    DATABASES = {"default": sqlite_database(VAR_DIR / "db.sqlite3")}
else:
    DATABASES = {"default": env.db("DATABASE_URL")}
    # Requests are short; a persistent connection saves a connect per request.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("CONN_HEALTH_CHECKS", default=True)
    # Behind PgBouncer in transaction mode, server-side cursors must be off.
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = env.bool(
        "DISABLE_SERVER_SIDE_CURSORS", default=False
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL", default=None)
EMBEDDED_BROKER = not REDIS_URL and "CELERY_BROKER_URL" not in os.environ
if EMBEDDED_BROKER:
    # kombu's filesystem transport: a real broker between separate processes, no server.
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = filesystem_broker_options(VAR_DIR / "broker")
else:
    CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL)
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
# Seconds between the first judgment after a run and the next aggregation run: the judgments
# of that window are aggregated together.
AGGREGATION_DELAY_SECONDS = env.float("AGGREGATION_DELAY_SECONDS", default=2.0)
CELERY_BEAT_SCHEDULE_FILENAME = env(
    "CELERY_BEAT_SCHEDULE_FILENAME", default=str(VAR_DIR / "celerybeat-schedule")
)
CELERY_BEAT_SCHEDULE = {
    # Enqueue aggregations owed and without a task (a failed publish, a worker killed holding
    # its countdown message, a broker restarted empty, a run killed midway): every few
    # seconds, so scores catch up within ~15 s of the last judgment. A sweep not started
    # within 30 s is dropped; a later one does its work.
    "aggregation-sweep": {
        "task": task_names.AGGREGATION_SWEEP,
        "schedule": 5.0,
        "options": {"expires": 30},
    },
    # Re-send export snapshots whose task was lost (failed send, dead worker); see
    # labeling/services/exports.py. A sweep not started within the minute is dropped.
    "export-snapshot-sweep": {
        "task": task_names.EXPORT_SNAPSHOT_SWEEP,
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # Re-send clip renders whose task was lost and mark pairs whose two clips are ready but
    # were missed (annotation/services/clips.py). Renders are minutes, so once a minute.
    "clips-sweep": {
        "task": annotation_tasks.CLIPS_SWEEP,
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # Ask again for reward labels behind their campaign's applied aggregation run (a lost
    # task, a killed worker): labeling/services/reward_labels.py.
    "reward-labels-sweep": {
        "task": task_names.REWARD_LABELS_SWEEP,
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # Remove the staging folders and upload files a killed import left under DATASETS_ROOT
    # (annotation/services/datasets.py), untouched for an hour.
    "datasets-sweep": {
        "task": annotation_tasks.DATASETS_SWEEP,
        "schedule": 3600.0,
        "options": {"expires": 3000},
    },
}
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True  # results live in our tables, never the result backend
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "annotation:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    # Swap for an object store (e.g. django-storages' S3 backend) by configuration alone.
    "default": {
        "BACKEND": env(
            "MEDIA_STORAGE_BACKEND", default="django.core.files.storage.FileSystemStorage"
        )
    },
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = env.bool("WHITENOISE_USE_FINDERS", default=DEBUG)
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env("MEDIA_ROOT", default=str(VAR_DIR / "media")))
# Media (clips) are served by an access-checking view with Range support. Behind nginx, set
# this to an internal location and nginx sends the bytes (X-Accel-Redirect); see docs/deploy.md.
MEDIA_ACCEL_REDIRECT_PREFIX = env("MEDIA_ACCEL_REDIRECT_PREFIX", default="")

# Per-process caches of tokens, campaigns and criteria, invalidated by PostgreSQL
# notifications (feedback_app/process_cache.py). Off: every request reads the database.
# Their listener holds a LISTEN session, which PgBouncer in transaction mode does not keep:
# off by default there.
PROCESS_CACHES = env.bool(
    "PROCESS_CACHES", default=not env.bool("DISABLE_SERVER_SIDE_CURSORS", default=False)
)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token -> user served from a per-process cache (feedback_app/process_cache.py).
        "feedback_app.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    "EXCEPTION_HANDLER": "annotation.api_errors.exception_handler",
    # Per user (or address) on every API call, scope "api"; judgments also count in
    # "judgments" (feedback_app/throttling.py).
    "DEFAULT_THROTTLE_CLASSES": ["feedback_app.throttling.ScopedThrottle"],
    "DEFAULT_PARSER_CLASSES": [
        "annotation.parsers.SafeJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
}
# Rate limits (feedback_app/throttling.py): "N/period" such as "60/min" or "10/15min"; an
# empty value switches one off (the tests and benchmarks do: their clients share 127.0.0.1).
THROTTLE_RATES = {
    "api": env("THROTTLE_API", default="1200/min"),
    "judgments": env("THROTTLE_JUDGMENTS", default="60/min"),
    "login": env("THROTTLE_LOGIN", default="10/15min"),
}
THROTTLE_EXEMPT_GROUP = env("THROTTLE_EXEMPT_GROUP", default="trusted-scripts")
THROTTLE_TRUSTED_PROXY_HEADER = env("THROTTLE_TRUSTED_PROXY_HEADER", default="")
# The counters live in the cache: Redis when there is one, so every web process counts
# together; a folder under VAR_DIR in embedded mode.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": env("CACHE_URL", default=REDIS_URL),
            "KEY_PREFIX": "feedback",
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

SPECTACULAR_SETTINGS = {
    "TITLE": "Preference feedback API",
    "DESCRIPTION": "Lease pairs, submit judgments, manage campaigns and export preference data.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Bulk-import limits per request (rows and bytes).
IMPORT_MAX_ROWS = env.int("IMPORT_MAX_ROWS", default=10_000)
IMPORT_MAX_BYTES = env.int("IMPORT_MAX_BYTES", default=10 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = IMPORT_MAX_BYTES + 1024 * 1024

# Imported RL datasets: one directory of .npy field files each (annotation/dataset_io.py),
# and the largest source file an import accepts.
DATASETS_ROOT = Path(env("DATASETS_ROOT", default=str(VAR_DIR / "datasets")))
DATASET_MAX_BYTES = env.int("DATASET_MAX_BYTES", default=2 * 1024**3)
# Where `import_dataset ID --format minari` finds a Minari dataset by id (the minari
# package's own variable and default); nothing is ever downloaded.
MINARI_DATASETS_PATH = Path(
    env("MINARI_DATASETS_PATH", default=str(Path.home() / ".minari" / "datasets"))
).expanduser()

# How long a judgment may stay uncommitted after its id is drawn; incremental pulls only
# return rows older than this so a slow commit of a lower id is never skipped.
JUDGMENT_SETTLE_SECONDS = env.float("JUDGMENT_SETTLE_SECONDS", default=2.0)

LOG_FORMAT = env("LOG_FORMAT", default="plain")  # "json" for one JSON object per line
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "feedback_app.request_id.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "feedback_app.request_id.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
}
