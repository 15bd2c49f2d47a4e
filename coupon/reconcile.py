"""Compare a campaign's claims in Redis with its rows in the database. Reports; never deletes."""
from dataclasses import dataclass, field

from sqlalchemy import select

from coupon import db
from coupon.queries import rows_by_serial
from coupon.redis_state import shard_claims

TICKET = ("user_id", "serial", "code")  # what is compared of a row
CHUNK = 10_000  # rows read a round: a few MB


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
        for user, claim in shard_claims(redis, shard):
            claims[user] = claim
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


def reconcile(redis, engine, keys, signer=None):
    """Compare a campaign's claims in Redis with its rows, in memory that does not grow with it.

    Each side is streamed in chunks into, per claim shard, a count and an order-independent
    digest of its tickets (user, serial, code); a shard whose count and digest agree with the
    rows of its users holds exactly those tickets (the rows have no user or serial twice: their
    unique keys). Only the shards that differ are compared ticket by ticket, so that the report
    names every difference. A claim's code is derived from its serial by `signer` (Redis stores
    none); without a signer only users and serials are compared."""
    total = campaign_total(engine, keys.campaign_id)
    columns = TICKET if signer else TICKET[:2]
    tickets = tickets_of(redis, keys, signer)
    counter, in_redis = 0, []
    for shard in keys.all_shards():
        in_redis.append(tally(tickets(shard)))
        counter += int(redis.hget(shard.state, "issued") or 0)
    counts, digests, shard_of = [0] * keys.shards, [0] * keys.shards, keys.shard_of
    for rows in rows_by_serial(engine, keys.campaign_id, columns, chunk=CHUNK):
        for row in rows:  # the hot loop of a close: kept plain (a row hashes as its tuple)
            k = shard_of(row[0])
            counts[k] += 1
            digests[k] += hash(row)
    in_mysql = [(count, digest & DIGEST_MASK) for count, digest in zip(counts, digests)]
    report = Report(keys.campaign_id, sum(c for c, _ in in_redis), counter, sum(counts))
    differing = [shard for shard, r, m in zip(keys.all_shards(), in_redis, in_mysql) if r != m]
    if differing:
        compare_tickets(report, engine, keys, differing, total, tickets, columns)
    # the rows' serials are those of every shard that agrees
    report.beyond_total = sorted({*report.beyond_total, *serials_above(engine, keys.campaign_id, total)})
    return report


def tickets_of(redis, keys, signer):
    """shard -> its claims as tickets: (user, serial, code), or (user, serial) without a signer."""
    def tickets(shard):
        for user, claim in shard_claims(redis, shard):
            if signer:
                yield user, claim.serial, signer.ticket_code(keys.campaign_id, claim.serial)
            else:
                yield user, claim.serial
    return tickets


DIGEST_MASK = 2**64 - 1


def tally(tickets):
    """(how many, the sum of their hashes modulo 2**64): equal for equal sets of tickets, in any
    order. Python's hash of a tuple is keyed per process: both sides are summed in this one."""
    count = digest = 0
    for ticket in tickets:
        count += 1
        digest += hash(ticket)
    return count, digest & DIGEST_MASK


def compare_tickets(report, engine, keys, shards, total, tickets, columns):
    """Name each difference between the claims of these shards and the rows of their users."""
    claims = {user: rest for shard in shards for user, *rest in tickets(shard)}
    indexes = {shard.index for shard in shards}
    serials = {serial for serial, *_ in claims.values()}
    rows, holder_of = {}, {}  # the rows of these shards' users; who holds these serials in the rows
    for chunk in rows_by_serial(engine, keys.campaign_id, columns, chunk=CHUNK):
        for user, serial, *rest in chunk:
            if keys.shard_of(user) in indexes:
                rows[user] = [serial, *rest]
            if serial in serials:
                holder_of[serial] = user
    report.missing_in_mysql = sorted(set(claims) - set(rows))
    report.extra_in_mysql = sorted(set(rows) - set(claims))
    report.different = sorted((u, tuple(claims[u]), tuple(rows[u]))
                              for u in set(claims) & set(rows) if claims[u] != rows[u])
    holders = {}
    for user, (serial, *_) in claims.items():
        holders.setdefault(serial, set()).add(user)
    for serial, user in holder_of.items():  # held in a shard that agrees with the rows
        if keys.shard_of(user) not in indexes:
            holders[serial].add(user)
    report.duplicate_serials = sorted((s, sorted(us)) for s, us in holders.items() if len(us) > 1)
    report.beyond_total = sorted(s for s in serials if s > total)


def serials_above(engine, campaign_id, total):
    c = db.coupons.c
    with engine.connect() as conn:
        return conn.execute(select(c.serial).where(c.campaign_id == campaign_id, c.serial > total)
                            .order_by(c.serial)).scalars().all()
