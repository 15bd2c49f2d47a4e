"""The gateways a worker needs, built once in init_app and kept in app.extensions["coupon"]."""
import os
import socket
import uuid

from coupon.arrival import ArrivalGate, ReadMarks, WorkerRoll, arrival_ms
from coupon.clock import RedisClock
from coupon.db import make_engine
from coupon.fairness import ArrivalLog
from coupon.issuing import Issuer
from coupon.keys import ACTIVE, CampaignKeys
from coupon.metrics import Metrics
from coupon.rate_limit import RateLimit
from coupon.redis_guard import RedisGuard
from coupon.redis_nodes import RedisNodes
from coupon.scripts import Scripts
from coupon.signing import Signer


class Services:
    def __init__(self, config):
        self.config = config
        self.redis = RedisNodes(config)
        self.redis_guard = RedisGuard(self.redis, production=config["ENV"] == "production")
        self.engine = make_engine(config["DATABASE_URL"])
        self.scripts = Scripts(self.redis)
        self.signer = Signer.from_config(config)
        self.metrics = Metrics()
        # one clock for every window: Redis's (with a cluster, the node of the registry's; the
        # nodes' clocks are kept together by NTP)
        self.clock = RedisClock(lambda: self.redis.time_at(ACTIVE))
        self.rate_limit = RateLimit(config["RATE_LIMIT"], config["RATE_LIMIT_WINDOW"], self.clock)
        # this process among the workers of every host (first come, first served across them)
        self.worker_id = "%s:%d:%s" % (socket.gethostname(), os.getpid(), uuid.uuid4().hex[:8])
        reads = ReadMarks()
        self.roll = WorkerRoll(self.redis, self.worker_id, self.clock)  # started by gunicorn's workers
        self.gate = ArrivalGate(
            self.worker_id,
            lambda campaign_id, *said: self.scripts.frontier(self.keys(campaign_id), self.worker_id,
                                                             *said),
            enabled=config["ARRIVAL_ORDER"],
            read_through=lambda: arrival_ms(reads.read_through_ns(), self.clock),
            workers_serving=lambda: self.roll.size)
        self.arrivals = ArrivalLog(self.scripts, self.keys, self.worker_id)
        self.issuer = Issuer(self)

    def keys(self, campaign_id):
        """The Redis keys of a campaign (the one place they are built)."""
        return CampaignKeys(campaign_id, self.config["CLAIM_SHARDS"])


def init_app(app):
    app.extensions["coupon"] = Services(app.config)


def services(app):
    return app.extensions["coupon"]
