"""The gateways a worker needs, built once in init_app and kept in app.extensions["coupon"]."""
from coupon.db import make_engine
from coupon.issuing import Issuer
from coupon.keys import CampaignKeys
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
        self.signer = Signer(config["SECRET_KEY"], config["TOKEN_TTL"])
        self.metrics = Metrics()
        self.rate_limit = RateLimit(config["RATE_LIMIT"], config["RATE_LIMIT_WINDOW"])
        self.issuer = Issuer(self.redis, self.scripts, self.engine, self.signer, config,
                             self.keys, self.metrics, self.rate_limit)

    def keys(self, campaign_id):
        """The Redis keys of a campaign (the one place they are built)."""
        return CampaignKeys(campaign_id, self.config["CLAIM_SHARDS"])


def init_app(app):
    app.extensions["coupon"] = Services(app.config)


def services(app):
    return app.extensions["coupon"]
