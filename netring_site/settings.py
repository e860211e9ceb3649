"""Django settings: one file, every value from a typed ``NETRING_*`` environment variable.

The README's configuration table lists each variable; a bad value stops the process with a
message that names it (see ``netring_site.config``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import django_stubs_ext

from netring_site.config import HOST_NAME, LOCATION_NAME, ConfigError, Env, folder_secret, is_ip
from probes.checks.pairing import SLOT_MARGIN_S as _SLOT_MARGIN_S

django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
env = Env()


def _database(url: str) -> dict[str, object]:
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query))
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "netring",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        # Persistent connections with a health check: workers survive a PostgreSQL restart.
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
        # A connection whose peer vanished without a FIN or RST (a WAN link down and back, a NAT
        # or firewall that forgot the flow, a database host that died) would otherwise wait for
        # the kernel's retransmissions, about 15 minutes, holding a worker thread or the
        # prober's writer: unacknowledged data fails it after 30 s (tcp_user_timeout), and an
        # idle one is found dead within a minute (keepalives). Ignored on Unix sockets; any of
        # them can be overridden in NETRING_DATABASE_URL's query string.
        "OPTIONS": {
            "connect_timeout": 5,
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            "tcp_user_timeout": 30_000,
            **options,
        },
    }


# --- Core -----------------------------------------------------------------------------------
DATA_DIR = Path(env.str("NETRING_DATA_DIR", str(BASE_DIR / ".netring")))
DEBUG = env.bool("NETRING_DEBUG", False)
SECRET_KEY = env.secret("NETRING_SECRET_KEY")
ALLOWED_HOSTS = env.list("NETRING_ALLOWED_HOSTS", ("localhost", "127.0.0.1", "[::1]"))
CSRF_TRUSTED_ORIGINS = env.list("NETRING_CSRF_TRUSTED_ORIGINS")
DATABASE_URL = env.url("NETRING_DATABASE_URL", "", schemes=("postgres", "postgresql"))
REDIS_URL = env.url("NETRING_REDIS_URL", "", schemes=("redis", "rediss", "unix"))
LOG_LEVEL = env.str("NETRING_LOG_LEVEL", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

# --- Member registry ------------------------------------------------------------------------
NETRING_LOCATION = env.str("NETRING_LOCATION", "")
NETRING_HEARTBEAT_INTERVAL = env.int("NETRING_HEARTBEAT_INTERVAL", 45, min=1, max=3600)
NETRING_STALE_AFTER = env.int("NETRING_STALE_AFTER", 90, min=1, max=86400)
NETRING_OFFLINE_AFTER = env.int("NETRING_OFFLINE_AFTER", 300, min=1, max=86400 * 7)
NETRING_DEREGISTERED_RETENTION = env.int("NETRING_DEREGISTERED_RETENTION", 3600, min=0, max=86400 * 365)
NETRING_OFFLINE_RETENTION = env.int("NETRING_OFFLINE_RETENTION", 7 * 86400, min=0, max=86400 * 365)
NETRING_CLEANUP_INTERVAL = env.int("NETRING_CLEANUP_INTERVAL", 60, min=5, max=86400)
NETRING_ENROLLMENT_TOKEN = env.secret("NETRING_ENROLLMENT_TOKEN")
NETRING_OPEN_ENROLLMENT = env.bool("NETRING_OPEN_ENROLLMENT", False)
NETRING_OPEN_ENROLLMENT_NETWORKS = env.networks("NETRING_OPEN_ENROLLMENT_NETWORKS")
NETRING_ALLOWED_MEMBER_NETWORKS = env.networks("NETRING_ALLOWED_MEMBER_NETWORKS")
# Reverse proxies whose X-Forwarded-For names the client (members.auth.client_ip); gunicorn
# takes their X-Forwarded-Proto too (compose/gunicorn.conf.py).
NETRING_TRUSTED_PROXIES = env.networks("NETRING_TRUSTED_PROXIES")
NETRING_AUTO_CREATE_LOCATIONS = env.bool("NETRING_AUTO_CREATE_LOCATIONS", True)
NETRING_PUBLIC_READ = env.bool("NETRING_PUBLIC_READ", False)
NETRING_METRICS_TOKEN = env.secret("NETRING_METRICS_TOKEN")

# --- Edge workers and mesh checks -----------------------------------------------------------
NETRING_CHECK_INTERVAL = env.int("NETRING_CHECK_INTERVAL", 60, min=5, max=86400)
NETRING_TCP_TIMEOUT = env.float("NETRING_TCP_TIMEOUT", 5.0, min=0.1, max=120)
NETRING_HTTP_TIMEOUT = env.float("NETRING_HTTP_TIMEOUT", 10.0, min=0.1, max=120)
NETRING_HTTP_ENDPOINTS = env.list("NETRING_HTTP_ENDPOINTS", ("/health", "/metrics"))
NETRING_EXPECTED_STATUS = env.str("NETRING_EXPECTED_STATUS", "200-399")
NETRING_ICMP_COUNT = env.int("NETRING_ICMP_COUNT", 5, min=0, max=100)
NETRING_ICMP_INTERVAL = env.float("NETRING_ICMP_INTERVAL", 0.2, min=0.01, max=10)
NETRING_MAX_IN_FLIGHT = env.int("NETRING_MAX_IN_FLIGHT", 2048, min=1, max=20000)
NETRING_MEMBER_PORT = env.int("NETRING_MEMBER_PORT", 8757, min=1, max=65535)
NETRING_MEMBER_BIND = env.str("NETRING_MEMBER_BIND", "")
NETRING_ADVERTISE_IP = env.str("NETRING_ADVERTISE_IP", "auto")
NETRING_INSTANCE_ID = env.str("NETRING_INSTANCE_ID", "")
NETRING_RETENTION_DAYS = env.int("NETRING_RETENTION_DAYS", 30, min=0, max=3650)
NETRING_PARTITION_INTERVAL = env.int("NETRING_PARTITION_INTERVAL", 3600, min=60, max=86400)

# --- Bandwidth tests and traceroute ---------------------------------------------------------
NETRING_BANDWIDTH_TEST_INTERVAL = env.int("NETRING_BANDWIDTH_TEST_INTERVAL", 300, min=10, max=86400 * 7)
NETRING_BANDWIDTH_TEST_DURATION = env.float("NETRING_BANDWIDTH_TEST_DURATION", 5.0, min=1.0, max=60.0)
NETRING_BANDWIDTH_TEST_SIZE_MB = env.float("NETRING_BANDWIDTH_TEST_SIZE_MB", 0.0, min=0.0, max=1_000_000.0)
NETRING_BANDWIDTH_MAX_MB = env.int("NETRING_BANDWIDTH_MAX_MB", 2000, min=1, max=1_000_000)
NETRING_BANDWIDTH_SECRET = env.secret("NETRING_BANDWIDTH_SECRET")
# "location": no location in two tests at once (they would share its uplink); "member": only no
# member in two (shorter cycles when locations have many members). probes.checks.pairing.
NETRING_BANDWIDTH_EXCLUSIVE = env.str("NETRING_BANDWIDTH_EXCLUSIVE", "location", choices=("location", "member"))
NETRING_TRACEROUTE_INTERVAL = env.int("NETRING_TRACEROUTE_INTERVAL", 300, min=10, max=86400 * 7)
NETRING_TRACEROUTE_DEADLINE = env.float("NETRING_TRACEROUTE_DEADLINE", 10.0, min=0.5, max=120.0)
NETRING_TRACEROUTE_MAX_HOPS = env.int("NETRING_TRACEROUTE_MAX_HOPS", 30, min=1, max=64)

# --- The 1 Hz prober ------------------------------------------------------------------------
NETRING_PROBER_METRICS_ADDR = env.str("NETRING_PROBER_METRICS_ADDR", "127.0.0.1:8758")
NETRING_PROBER_MAX_IN_FLIGHT = env.int("NETRING_PROBER_MAX_IN_FLIGHT", 256, min=1, max=10000)
NETRING_PROBER_RELOAD = env.float("NETRING_PROBER_RELOAD", 5.0, min=0.5, max=10)

if NETRING_PROBER_METRICS_ADDR and not NETRING_PROBER_METRICS_ADDR.rpartition(":")[2].isdigit():
    env.problems.append(f"NETRING_PROBER_METRICS_ADDR={NETRING_PROBER_METRICS_ADDR!r}: expected host:port, or empty")

for _path in NETRING_HTTP_ENDPOINTS:
    if not _path.startswith("/") or any(c.isspace() for c in _path):
        env.problems.append(f"NETRING_HTTP_ENDPOINTS: {_path!r} must be a path starting with '/'")
try:
    from probes.checks.http import StatusRange as _StatusRange

    _StatusRange.parse(NETRING_EXPECTED_STATUS)
except ValueError as _exc:
    env.problems.append(f"NETRING_EXPECTED_STATUS={NETRING_EXPECTED_STATUS!r}: {_exc}")
if NETRING_LOCATION and not re.fullmatch(LOCATION_NAME, NETRING_LOCATION):
    env.problems.append(
        f"NETRING_LOCATION={NETRING_LOCATION!r}: 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
    )
if not (
    NETRING_ADVERTISE_IP == "auto"
    or re.fullmatch(r"env:[A-Za-z_][A-Za-z0-9_]*", NETRING_ADVERTISE_IP)
    or is_ip(NETRING_ADVERTISE_IP)
    or re.fullmatch(HOST_NAME, NETRING_ADVERTISE_IP)
):
    env.problems.append(
        f"NETRING_ADVERTISE_IP={NETRING_ADVERTISE_IP!r}: expected an IP address, a host name, env:VARIABLE or auto"
    )
if NETRING_MEMBER_BIND and not is_ip(NETRING_MEMBER_BIND):
    env.problems.append(f"NETRING_MEMBER_BIND={NETRING_MEMBER_BIND!r}: expected an IP address such as 0.0.0.0 or ::")
if NETRING_INSTANCE_ID:
    import uuid as _uuid

    try:
        _uuid.UUID(NETRING_INSTANCE_ID)
    except ValueError:
        env.problems.append(f"NETRING_INSTANCE_ID={NETRING_INSTANCE_ID!r}: expected a UUID")

if NETRING_BANDWIDTH_TEST_INTERVAL < 2 * NETRING_BANDWIDTH_TEST_DURATION + _SLOT_MARGIN_S:
    env.problems.append(
        f"NETRING_BANDWIDTH_TEST_INTERVAL={NETRING_BANDWIDTH_TEST_INTERVAL} must hold one test slot: at least "
        f"2 x NETRING_BANDWIDTH_TEST_DURATION + {_SLOT_MARGIN_S:g} = "
        f"{2 * NETRING_BANDWIDTH_TEST_DURATION + _SLOT_MARGIN_S:g} seconds"
    )
if NETRING_TRACEROUTE_DEADLINE >= NETRING_TRACEROUTE_INTERVAL:
    env.problems.append(
        f"NETRING_TRACEROUTE_DEADLINE={NETRING_TRACEROUTE_DEADLINE:g} must be less than "
        f"NETRING_TRACEROUTE_INTERVAL={NETRING_TRACEROUTE_INTERVAL}"
    )
if NETRING_STALE_AFTER >= NETRING_OFFLINE_AFTER:
    env.problems.append(
        f"NETRING_STALE_AFTER={NETRING_STALE_AFTER} must be less than NETRING_OFFLINE_AFTER={NETRING_OFFLINE_AFTER}"
    )
if not DATABASE_URL:
    env.problems.append(
        "NETRING_DATABASE_URL is not set: give a postgresql:// URL, or use `make demo` / "
        "`python -m netring_site.devstack run -- ...`, which start an embedded PostgreSQL"
    )
if not REDIS_URL:
    env.problems.append("NETRING_REDIS_URL is not set: give a redis:// URL, or use `make demo`")

try:
    env.check()
except ConfigError as exc:
    # Stop every kind of process (manage.py, gunicorn, celery) with the variable named.
    sys.stderr.write(f"netring: {exc}\n")
    raise SystemExit(2) from None

if not SECRET_KEY:
    # Development and demo: one key per data folder, kept across restarts. Production sets
    # NETRING_SECRET_KEY (or _FILE) so that every web replica signs sessions alike.
    SECRET_KEY = folder_secret(DATA_DIR / "secret_key")

# --- Django ---------------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "members",
    "probes",
    "dashboard",
]

# Accepted member heartbeats are answered before this chain (members.fastpath, in wsgi.py), with
# the headers it would add: a middleware added here turns that off until members.fastpath knows it.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "netring_site.urls"
WSGI_APPLICATION = "netring_site.wsgi.application"
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

DATABASES = {"default": _database(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
# Served by whitenoise from the web process; the folder is filled by `collectstatic`.
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Registry requests are small JSON documents; a larger body is an error, not a load.
DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024
DATA_UPLOAD_MAX_NUMBER_FIELDS = 200

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
LOGIN_URL = "/admin/login/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "members.auth.MemberTokenAuthentication",
        "members.auth.UserTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["members.auth.ReadForUsersAndMembers"],
    # JSON only, bounded by DATA_UPLOAD_MAX_MEMORY_SIZE (netring_site.parsers.JSONParser).
    "DEFAULT_PARSER_CLASSES": ["netring_site.parsers.JSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "netring_site.pagination.Pagination",
    "PAGE_SIZE": 500,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "netring_site.api.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Netring API",
    "DESCRIPTION": "Registry, mesh results, prober samples and SLA reports of Netring.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    # Swagger UI from the installed sidecar package: the docs page works without internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "MemberKindEnum": "members.models.Member.Kind",
        "CheckKindEnum": "probes.models.CheckKind",
        "BandwidthStatusEnum": "probes.models.BandwidthStatus",
        "BandwidthDirectionEnum": "probes.models.BandwidthDirection",
        "TraceStatusEnum": "probes.models.TraceStatus",
        "PathKindEnum": "probes.models.PathKind",
        "TopologyNodeKindEnum": ["location", "router"],
    },
}

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None  # keep retrying: an outage must not end a worker
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_timeout": 10, "socket_connect_timeout": 5, "health_check_interval": 10}
CELERY_TASK_DEFAULT_QUEUE = "netring.central"
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 270
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
