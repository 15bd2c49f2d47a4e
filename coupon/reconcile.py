"""Compare a campaign's claims in Redis with its rows in the database. Reports; never deletes."""
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import select, text

from coupon import db
from coupon.fairness import SaleOrder
from coupon.queries import rows_by_serial
from coupon.redis_state import issued_counted, shard_claims

TICKET = ("user_id", "serial", "code")  # what is compared of a row
CHUNK = 10_000  # serials whose rows are read a round: a few MB


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
    order: SaleOrder = None  # how its coupons went against its requests' arrival (close reads it)

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
        if self.order is not None:
            out.extend(self.order.lines())
        return out


def redis_claims(redis, keys):
    """All claims of a campaign: {user: StoredClaim}, and the sum of the issued counters."""
    claims = {}
    for shard in keys.all_shards():
        for user, claim in shard_claims(redis, shard):
            claims[user] = claim
    return claims, issued_counted(redis, keys)


def campaign_total(engine, campaign_id):
    with engine.connect() as conn:
        return conn.execute(select(db.campaigns.c.total).where(db.campaigns.c.id == campaign_id)).scalar()


def mysql_tickets(engine, campaign_id):
    c = db.coupons.c
    with engine.connect() as conn:
        rows = conn.execute(select(c.user_id, c.serial, c.code).where(c.campaign_id == campaign_id))
        return {user: (serial, code) for user, serial, code in rows}


def reconcile(redis, engine, keys, signer):
    """Compare a campaign's claims in Redis with its rows, in memory that does not grow with it.

    Per claim shard, both sides are reduced to a count and an order-independent digest of their
    tickets (user, serial, code): the claims streamed from Redis, the rows by the database itself
    (database_tallies). A shard whose count and digest agree with the rows of its users holds
    exactly those tickets (the rows have no user or serial twice: their unique keys). Only the
    shards that differ are compared ticket by ticket, so that the report names every difference.
    Redis stores no code: a claim's is derived from its serial by `signer`."""
    total = campaign_total(engine, keys.campaign_id)
    tickets = tickets_of(redis, keys, signer)
    with ThreadPoolExecutor(1) as database:  # it tallies while this thread reads Redis
        in_database = database.submit(database_tallies, engine, keys)
        in_redis = [tally(tickets(shard)) for shard in keys.all_shards()]
        counter = issued_counted(redis, keys)
        in_mysql = in_database.result()
    report = Report(keys.campaign_id, sum(c for c, _ in in_redis), counter, sum(c for c, _ in in_mysql))
    differing = [shard for shard, r, m in zip(keys.all_shards(), in_redis, in_mysql) if r != m]
    if differing:
        compare_tickets(report, engine, keys, differing, total, tickets)
    # the rows' serials are those of every shard that agrees
    report.beyond_total = sorted({*report.beyond_total, *serials_above(engine, keys.campaign_id, total)})
    return report


def tickets_of(redis, keys, signer):
    """shard -> its claims as tickets: (user, serial, code)."""
    def tickets(shard):
        for user, claim in shard_claims(redis, shard):
            yield user, claim.serial, signer.ticket_code(keys.campaign_id, claim.serial)
    return tickets


def ticket_digest(user, serial, code):
    """64 bits of MD5("user|serial|code"): what MySQL computes of a row in database_tallies."""
    return int.from_bytes(hashlib.md5(f"{user}|{serial}|{code}".encode()).digest()[:8], "big")


def tally(tickets):
    """(how many, the sum of their digests): equal for equal sets of tickets, in any order."""
    count = digest = 0
    for user, serial, code in tickets:
        count += 1
        digest += ticket_digest(user, serial, code)
    return count, digest


# a row's claim shard and digest, as keys.CampaignKeys.shard_of and ticket_digest compute them
# (MySQL's CRC32 and MD5 read the utf8mb4 bytes, as Python's of str.encode()); SUM of BIGINT
# UNSIGNED is an exact DECIMAL
SHARD_TALLIES = text(
    "SELECT CRC32(user_id) % :shards AS shard, COUNT(*),"
    " SUM(CAST(CONV(LEFT(MD5(CONCAT_WS('|', user_id, serial, code)), 16), 16, 10) AS UNSIGNED))"
    f" FROM {db.coupons.name} WHERE campaign_id = :campaign_id GROUP BY shard")


def database_tallies(engine, keys):
    """Per claim shard, tally() of the campaign's rows of its users.

    Tallied by MySQL/MariaDB itself in one query (no row crosses the wire), elsewhere (SQLite) from
    the rows streamed."""
    if engine.dialect.name not in ("mysql", "mariadb"):
        return streamed_tallies(engine, keys)
    tallies = [(0, 0)] * keys.shards
    with engine.connect() as conn:
        for k, count, digest in conn.execute(SHARD_TALLIES, {"shards": keys.shards,
                                                             "campaign_id": keys.campaign_id}):
            tallies[int(k)] = (count, int(digest))
    return tallies


def streamed_tallies(engine, keys):
    counts, digests = [0] * keys.shards, [0] * keys.shards
    for rows in rows_by_serial(engine, keys.campaign_id, TICKET, chunk=CHUNK):
        for user, serial, code in rows:
            k = keys.shard_of(user)
            counts[k] += 1
            digests[k] += ticket_digest(user, serial, code)
    return list(zip(counts, digests))


def compare_tickets(report, engine, keys, shards, total, tickets):
    """Name each difference between the claims of these shards and the rows of their users."""
    claims = {user: (serial, code) for shard in shards for user, serial, code in tickets(shard)}
    indexes = {shard.index for shard in shards}
    serials = {serial for serial, _ in claims.values()}
    rows, holder_of = {}, {}  # the rows of these shards' users; who holds these serials in the rows
    for chunk in rows_by_serial(engine, keys.campaign_id, TICKET, chunk=CHUNK):
        for user, serial, code in chunk:
            if keys.shard_of(user) in indexes:
                rows[user] = (serial, code)
            if serial in serials:
                holder_of[serial] = user
    report.missing_in_mysql = sorted(set(claims) - set(rows))
    report.extra_in_mysql = sorted(set(rows) - set(claims))
    report.different = sorted((u, claims[u], rows[u]) for u in set(claims) & set(rows) if claims[u] != rows[u])
    holders = {}
    for user, (serial, _) in claims.items():
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
