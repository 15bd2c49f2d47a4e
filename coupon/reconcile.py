"""Compare a campaign's claims in Redis with its rows in the database. Reports; never deletes."""
from dataclasses import dataclass, field

from sqlalchemy import select

from coupon import db
from coupon.scripts import StoredClaim


@dataclass
class Report:
    campaign_id: int
    redis_claims: int = 0
    redis_counter: int = 0  # the shards' issued counters
    mysql_rows: int = 0
    missing_in_mysql: list = field(default_factory=list)  # users
    extra_in_mysql: list = field(default_factory=list)  # users
    different: list = field(default_factory=list)  # (user, redis (serial, code), mysql (serial, code))
    duplicate_serials: list = field(default_factory=list)
    beyond_total: list = field(default_factory=list)  # serials above the campaign's total

    @property
    def agree(self):
        return (
            self.redis_claims == self.redis_counter == self.mysql_rows
            and not (self.missing_in_mysql or self.extra_in_mysql or self.different
                     or self.duplicate_serials or self.beyond_total)
        )

    def lines(self, limit=20):
        """The report for people: counts, then each difference (the first `limit` of each kind)."""
        out = [
            f"campaign {self.campaign_id}: redis claims {self.redis_claims}, "
            f"redis counter {self.redis_counter}, database rows {self.mysql_rows}: "
            + ("AGREE" if self.agree else "DIFFER")
        ]
        for title, items in (("missing in the database", self.missing_in_mysql),
                             ("in the database, not in redis", self.extra_in_mysql),
                             ("different ticket", self.different),
                             ("serial held twice", self.duplicate_serials),
                             ("serial above the campaign's total", self.beyond_total)):
            if items:
                out.append(f"  {title}: {len(items)}")
                out.extend(f"    {item}" for item in items[:limit])
        return out


def redis_claims(redis, keys):
    """All claims of a campaign: {user: StoredClaim}, and the sum of the issued counters."""
    claims, counter = {}, 0
    for shard in keys.all_shards():
        for user, value in redis.client_for(shard.claims).hscan_iter(shard.claims, count=1000):
            claims[user] = StoredClaim.parse(value)
        counter += int(redis.hget(shard.state, "issued") or 0)
    return claims, counter


def campaign_total(engine, campaign_id):
    with engine.connect() as conn:
        return conn.execute(select(db.campaigns.c.total).where(db.campaigns.c.id == campaign_id)).scalar()


def mysql_tickets(engine, campaign_id):
    c = db.coupons.c
    with engine.connect() as conn:
        rows = conn.execute(select(c.user_id, c.serial, c.code).where(c.campaign_id == campaign_id))
        return {user: (serial, code) for user, serial, code in rows}


def reconcile(redis, engine, keys):
    total = campaign_total(engine, keys.campaign_id)
    stored, counter = redis_claims(redis, keys)
    claims = {user: (claim.serial, claim.code) for user, claim in stored.items()}
    rows = mysql_tickets(engine, keys.campaign_id)
    report = Report(keys.campaign_id, len(claims), counter, len(rows))
    report.missing_in_mysql = sorted(set(claims) - set(rows))
    report.extra_in_mysql = sorted(set(rows) - set(claims))
    report.different = sorted((u, claims[u], rows[u]) for u in set(claims) & set(rows) if claims[u] != rows[u])
    holders = {}
    for user, (serial, _) in claims.items():
        holders.setdefault(serial, []).append(user)
    report.duplicate_serials = sorted((s, sorted(us)) for s, us in holders.items() if len(us) > 1)
    report.beyond_total = sorted(s for s in holders if s > total)
    return report
