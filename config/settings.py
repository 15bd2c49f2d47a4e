"""Settings of the service, one place for all of them (docs/configuration.md explains each).

Precedence: the defaults below < the Python file named by COUPON_SETTINGS (default
instance/settings.py, optional) < environment variables of the same name, each read by the
parser given here. Loaded with Flask's own config loading (load_into).
"""
import os
from urllib.parse import urlsplit

DEV_SECRET_KEY = "dev-secret-change-me"
SQLITE_DEFAULT = "sqlite:///instance/coupon.db"


def optional_int(text):
    """An integer, or None for an empty value."""
    return int(text) if text.strip() else None


def on_off(text):
    """true for on/true/yes/1, false for off/false/no/0 (any case); anything else is refused."""
    value = text.strip().lower()
    if value not in ("on", "true", "yes", "1", "off", "false", "no", "0"):
        raise ValueError(f"say on or off, not {text!r}")
    return value in ("on", "true", "yes", "1")


# name: (default, parser of its environment variable)
SETTINGS = {
    # Runtime mode: development or production (production refuses the development secret, the
    # SQLite default, and a JWKS without an issuer and an audience: check_production)
    "ENV": ("development", str),
    # Signing of ticket codes (and, unless AUTH_JWT_SECRET is set, of the tokens flask token mints)
    "SECRET_KEY": (DEV_SECRET_KEY, str),
    "TOKEN_TTL": (30 * 24 * 3600, int),  # seconds a minted user token stays valid
    # User tokens: JWTs, HS* with a shared secret, or signed by the platform's IdP (its JWKS)
    "AUTH_JWT_SECRET": ("", str),  # HS256/384/512 key, at least 32 bytes; empty: derived from SECRET_KEY
    "AUTH_JWKS_URL": ("", str),  # https://, file://, or http:// on a loopback host; empty: no JWKS
    "AUTH_JWKS_REFRESH": (300.0, float),  # seconds between scheduled fetches of the JWKS
    "AUTH_JWKS_MIN_REFRESH": (30.0, float),  # seconds between fetches at least (unknown kids, failures)
    "AUTH_ISSUER": ("", str),  # the iss tokens must carry; empty: not checked
    "AUTH_AUDIENCE": ("", str),  # the aud tokens must carry; empty: not checked
    "AUTH_LEEWAY": (5, int),  # seconds of clock difference allowed on exp, nbf and iat
    "AUTH_USER_CLAIM": ("sub", str),  # the claim that holds the user id
    # Storage
    "DATABASE_URL": (SQLITE_DEFAULT, str),
    "REDIS_URL": ("redis://127.0.0.1:6379/0", str),
    # Redis Cluster instead: "host:port,host:port,..." (several, so one down at start is no matter)
    "REDIS_CLUSTER_NODES": ("", str),
    "REDIS_TIMEOUT": (2.0, float),  # seconds; a Redis call slower than this answers 503
    "REDIS_POOL_SIZE": (64, int),  # connections per worker process
    # Replicas that must hold a write before it is acknowledged (WAIT): None is 1 on a cluster, 0
    # on a single Redis; and how long to wait for them (seconds, at most REDIS_TIMEOUT / 2)
    "REDIS_REPLICA_ACKS": (None, optional_int),
    "REDIS_REPLICA_TIMEOUT": (1.0, float),
    # Issuing
    "BLOCK_SIZE": (2000, int),  # most serials one worker leases at a time
    "SINGLE_LEASE_TAIL": (64, int),  # the last this many serials are leased only to waiting requests
    # claim shards (hash tags) per campaign; None: 12 on a cluster (even over 2, 3, 4 or 6 masters),
    # 1 on a single Redis (a worker's claim batch in one claim.lua call: BENCHMARKS.md, "Capacity")
    "CLAIM_SHARDS": (None, optional_int),
    "LEASE_TTL": (30.0, float),  # seconds a lease lives without renewal
    "STATE_REFRESH": (1.0, float),  # seconds a worker trusts its cached window / sold-out state
    "CLAIM_BATCH_MAX": (256, int),  # most claims sent in one script call
    # serve issue requests in the order they arrived, across workers and hosts (coupon/arrival.py);
    # off by default: a coupon of the ordered tail waits 20 ms or more (docs/api.md; make bench-fair)
    "ARRIVAL_ORDER": (False, on_off),
    # a request's arrival is the front proxy's X-Request-Start, where it waited first; only behind
    # a proxy that sets it on every request (a client's own would jump the queue)
    "TRUST_REQUEST_START": (False, on_off),
    "RATE_LIMIT": (20, int),  # requests per user per window, summed over all workers; 0: no limit
    "RATE_LIMIT_WINDOW": (10, int),  # seconds of the fixed rate-limit window
    # Scheduler (flask jobs run): one leader at a time across hosts
    "SCHEDULER_LEASE": (10.0, float),  # seconds; a standby takes over within this after the leader dies
    "FLUSH_INTERVAL": (0.5, float),  # seconds between flushes of the outbox into the database
    "FLUSH_BATCH": (1000, int),  # rows a stream and round, about (coupon/flusher.py)
    "FLUSH_CLAIM_IDLE": (5.0, float),  # seconds before a dead flusher's pending entries are taken over
    "STOCK_SYNC_INTERVAL": (5.0, float),
    "LIFECYCLE_INTERVAL": (1.0, float),
    "RECLAIM_INTERVAL": (5.0, float),
    # Events on RabbitMQ (coupon/events.py, docs/events.md): an amqp:// or amqps:// URL; empty: none
    "EVENTS_URL": ("", str),
    "EVENTS_INTERVAL": (0.2, float),  # seconds between the publisher's looks for events to send
    "EVENTS_BATCH": (5000, int),  # events published per window, their confirms awaited together
    # seconds a window may wait for its confirms: a broker's memory or disk alarm blocks publishers
    # without a word; past it the connection is dropped and the window sent again later
    "EVENTS_CONFIRM_TIMEOUT": (10.0, float),
    # HTTP
    "MAX_CONTENT_LENGTH": (4096, int),  # bytes; larger bodies answer 413
    "BODY_TIMEOUT": (5.0, float),  # seconds from a request's arrival to the end of its body; later: 408
    # The operators' page (/ops/): HTTP Basic with this password in production; none: no page
    "OPS_PASSWORD": ("", str),
}


def from_environment(environ):
    """The settings that environment variables set, each parsed.

    A value that does not parse is refused with its name."""
    values = {}
    for name, (_, parse) in SETTINGS.items():
        if name in environ:
            try:
                values[name] = parse(environ[name])
            except ValueError:
                raise RuntimeError(f"{name}={environ[name]!r} is not a valid {parse.__name__}") from None
    return values


def load_into(config, overrides=None):
    """Fill a flask.Config: defaults, the settings file, the environment, then `overrides`.

    Refuse what production must not run with."""
    config.from_mapping({name: default for name, (default, _) in SETTINGS.items()})
    config.from_pyfile(os.path.abspath(os.environ.get("COUPON_SETTINGS", os.path.join("instance", "settings.py"))),
                       silent=True)
    config.from_mapping(from_environment(os.environ))
    config.from_mapping(overrides or {})
    if config["CLAIM_SHARDS"] is None:
        config["CLAIM_SHARDS"] = 12 if config["REDIS_CLUSTER_NODES"] else 1
    check_auth(config)
    check_events(config)
    check_production(config)
    return config


def check_auth(config):
    """Refuse a JWKS URL that could be intercepted, and an HS secret too short to be one."""
    url = urlsplit(config["AUTH_JWKS_URL"])
    if config["AUTH_JWKS_URL"] and not (url.scheme in ("https", "file") or (
            url.scheme == "http" and url.hostname in ("127.0.0.1", "::1", "localhost"))):
        raise RuntimeError("AUTH_JWKS_URL must be https://, file://, or http:// on a loopback host")
    if config["AUTH_JWT_SECRET"] and len(config["AUTH_JWT_SECRET"].encode()) < 32:
        raise RuntimeError("AUTH_JWT_SECRET must be at least 32 bytes (or empty: derived from SECRET_KEY)")


def check_events(config):
    """Refuse an EVENTS_URL that names no AMQP broker."""
    if config["EVENTS_URL"] and urlsplit(config["EVENTS_URL"]).scheme not in ("amqp", "amqps"):
        raise RuntimeError("EVENTS_URL must be an amqp:// or amqps:// URL (or empty: no events)")


def check_production(config):
    """Refuse to run in production with a setting fit only for development.

    Those are the development secret, the first run's SQLite file, or a JWKS whose tokens are not
    held to an issuer and an audience."""
    if config["ENV"] != "production":
        return
    if config["SECRET_KEY"] in ("", DEV_SECRET_KEY):
        raise RuntimeError("SECRET_KEY must be set to a private value when ENV=production")
    if config["DATABASE_URL"] in ("", SQLITE_DEFAULT):
        raise RuntimeError("DATABASE_URL must name the production database (MySQL) when "
                           "ENV=production, not the first run's SQLite file")
    if config["AUTH_JWKS_URL"] and not (config["AUTH_ISSUER"] and config["AUTH_AUDIENCE"]):
        raise RuntimeError("AUTH_ISSUER and AUTH_AUDIENCE must be set when ENV=production and "
                           "AUTH_JWKS_URL is: a key of the IdP signs tokens for other services too")
