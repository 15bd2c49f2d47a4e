"""Settings of the service, one place for all of them.

Precedence: the defaults below < the Python file named by ``COUPON_SETTINGS`` (default
``instance/settings.py``, optional) < environment variables of the same name. Every
variable is documented in ``.env.example``.
"""
import os

DEV_SECRET_KEY = "dev-secret-change-me"


class Config:
    # Runtime mode: "development" or "production" (production refuses the dev secret)
    ENV = "development"
    # Signing of user tokens and ticket codes
    SECRET_KEY = DEV_SECRET_KEY
    TOKEN_TTL = 30 * 24 * 3600  # seconds a minted user token stays valid
    # Storage
    DATABASE_URL = "sqlite:///instance/coupon.db"
    REDIS_URL = "redis://127.0.0.1:6379/0"
    # Redis Cluster instead: "host:port,host:port,..." (several, so one down at start is no matter)
    REDIS_CLUSTER_NODES = ""
    REDIS_TIMEOUT = 2.0  # seconds; a Redis call slower than this answers 503
    REDIS_POOL_SIZE = 64  # connections per worker process
    # Replicas that must hold a write before it is acknowledged (WAIT): "" is 1 on a cluster, 0 on
    # a single Redis; and how long to wait for them (seconds, at most REDIS_TIMEOUT / 2) before
    # answering 503
    REDIS_REPLICA_ACKS = ""
    REDIS_REPLICA_TIMEOUT = 1.0
    # Issuing
    BLOCK_SIZE = 2000  # most serials one worker leases at a time
    SINGLE_LEASE_TAIL = 64  # the last this many serials are leased only to waiting requests
    CLAIM_SHARDS = 12  # claim shards (hash tags) per campaign: spread evenly over 2, 3, 4 or 6 masters
    LEASE_TTL = 30.0  # seconds a lease lives without renewal
    STATE_REFRESH = 1.0  # seconds a worker trusts its cached window / sold-out state
    CLAIM_BATCH_MAX = 256  # most claims sent in one script call
    RATE_LIMIT = 20  # issue requests per user per window, summed over all workers; 0: no limit
    RATE_LIMIT_WINDOW = 10  # seconds of the fixed rate-limit window
    # Scheduler (flask jobs run): one leader at a time across hosts
    SCHEDULER_LEASE = 10.0  # seconds; a standby takes over within this after the leader dies
    FLUSH_INTERVAL = 0.5  # seconds between flushes of the outbox into the database
    FLUSH_BATCH = 1000  # entries read per stream and round
    FLUSH_CLAIM_IDLE = 5.0  # seconds before entries left pending by a dead flusher are taken over
    STOCK_SYNC_INTERVAL = 5.0
    LIFECYCLE_INTERVAL = 1.0
    RECLAIM_INTERVAL = 5.0
    # HTTP
    MAX_CONTENT_LENGTH = 4096  # bytes; larger bodies answer 413
    BODY_TIMEOUT = 5.0  # seconds from a request's arrival to the end of its body; later: 408
    # The operators' page (/ops/): HTTP Basic with this password in production; none: no page
    OPS_PASSWORD = ""

    @classmethod
    def load(cls):
        """Return the settings as a dict: defaults, then the settings file, then the environment."""
        values = {k: getattr(cls, k) for k in dir(cls) if k.isupper()}
        path = os.environ.get("COUPON_SETTINGS", os.path.join("instance", "settings.py"))
        if os.path.exists(path):
            scope = {}
            with open(path) as f:
                exec(compile(f.read(), path, "exec"), scope)
            values.update({k: v for k, v in scope.items() if k in values})
        for key, default in list(values.items()):
            if key in os.environ:
                values[key] = type(default)(os.environ[key])
        return values


def check_production(values):
    """Refuse to run in production with the development secret."""
    if values["ENV"] == "production" and values["SECRET_KEY"] in ("", DEV_SECRET_KEY):
        raise RuntimeError("SECRET_KEY must be set to a private value when ENV=production")
