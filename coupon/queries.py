"""The read side: a campaign's row and public status, the list of campaigns, a user's ticket.

From Redis while a campaign is live, from the database once it was closed and released. And a
sale counted per second, for the operators' page and the close that records its replay."""
import json
import math
from operator import itemgetter

from redis.exceptions import RedisError
from sqlalchemy import Integer, cast, func, select, text

from coupon import db
from coupon.clock import EPOCH, from_ms, iso, to_ms, utcnow
from coupon.errors import CampaignNotFound, CouponError, NoTicket, Unavailable
from coupon.redis_state import holds, issued_in_redis, stored_claim
from coupon.tickets import Ticket

CHUNK = 2000  # serials whose rows are read a round (rows_by_serial), by default
REPLAY_POINTS = 3600  # a longer sale is counted in steps of several seconds


def campaign_row(engine, campaign_id):
    if not 1 <= campaign_id <= db.MAX_ID:  # no such row, and no query the driver cannot bind
        raise CampaignNotFound(f"no campaign {campaign_id}")
    with engine.connect() as conn:
        row = conn.execute(select(db.campaigns).where(db.campaigns.c.id == campaign_id)).first()
    if row is None:
        raise CampaignNotFound(f"no campaign {campaign_id}")
    return row


def campaign_status(svc, campaign_id):
    """Public status of a campaign: from Redis while it is live, from MySQL after close."""
    return status_of(svc, campaign_row(svc.engine, campaign_id))


def status_of(svc, row):
    """Public status of a campaigns row: issued from Redis while it holds the campaign."""
    try:
        issued = issued_in_redis(svc.redis, svc.keys(row.id))
    except RedisError:
        issued = None
    return status_view(row, row.issued if issued is None else issued)


def status_view(row, issued):
    """The public status of a campaigns row with `issued` coupons."""
    now = utcnow()
    status = row.status
    if status != "closed" and row.closes_at and now >= row.closes_at:
        status = "closed"
    elif status == "scheduled" and row.opens_at <= now:
        status = "open"
    if status == "open" and issued >= row.total:
        status = "sold_out"
    return {
        "id": row.id, "name": row.name, "total": row.total, "issued": issued,
        "remaining": row.total - issued, "status": status,
        "opens_at": iso(row.opens_at), "closes_at": iso(row.closes_at),
    }


def stock_additions(engine, campaign_id):
    """The additions `add-stock` made to a campaign, oldest first."""
    a = db.stock_additions.c
    with engine.connect() as conn:
        rows = conn.execute(select(a.request_id, a.amount, a.total_after, a.added_at)
                            .where(a.campaign_id == campaign_id).order_by(a.id)).all()
    return [{"request_id": r.request_id, "amount": r.amount, "total_after": r.total_after,
             "added_at": iso(r.added_at)} for r in rows]


def count_rows(engine, campaign_id):
    """The campaign's rows in the database (what recover restores)."""
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(db.coupons)
                            .where(db.coupons.c.campaign_id == campaign_id)).scalar()


def rows_by_serial(engine, campaign_id, columns=("user_id", "serial", "code", "issued_at"),
                   chunk=CHUNK):
    """The campaign's rows in serial order, those of `chunk` serials at a time (serial_ranges).

    Of each row, those columns: names, or column expressions."""
    c = db.coupons.c
    for first, last in serial_ranges(engine, campaign_id, chunk):
        with engine.connect() as conn:
            rows = conn.execute(
                select(*(c[name] if isinstance(name, str) else name for name in columns))
                .where(c.campaign_id == campaign_id, c.serial.between(first, last))
                .order_by(c.serial)
            ).all()
        if rows:
            yield rows


def serial_ranges(engine, campaign_id, chunk):
    """(first, last) of each `chunk` serials up to the campaign's highest serial when it starts.

    Read once the rows are final. Each read of one is a range of the unique index on
    (campaign_id, serial): `serial > X ... LIMIT n` had MariaDB walk that index from the
    campaign's first serial at every read, a time that grew with the square of the rows."""
    c = db.coupons.c
    with engine.connect() as conn:
        top = conn.execute(select(func.max(c.serial)).where(c.campaign_id == campaign_id)).scalar()
    for first in range(1, (top or 0) + 1, chunk):
        yield first, first + chunk - 1


# the rows of a chunk of serials as one string: PyMySQL takes some 5 µs to parse a row, most
# of what recover spent at 10M; a user id holds no space (signing.USER_ID)
AGGREGATED_CLAIMS = text(
    "SELECT COUNT(*), GROUP_CONCAT(user_id, ' ', serial, ' ',"
    " TIMESTAMPDIFF(MICROSECOND, '1970-01-01', issued_at) DIV 1000 SEPARATOR ' ')"
    " FROM coupons WHERE campaign_id = :campaign AND serial BETWEEN :first AND :last")
AGGREGATED_MAX = 1 << 24  # bytes of the string: 10,000 rows of 64-character user ids take 0.9 MB


def claims_by_serial(engine, campaign_id, chunk):
    """What recover writes back: (user_id, serial, issued_at_ms) of each row of the campaign.

    In serial order, a list per `chunk` serials (as rows_by_serial; call it once the rows are
    final). MySQL/MariaDB aggregate each list into one string (AGGREGATED_CLAIMS)."""
    if engine.dialect.name not in ("mysql", "mariadb"):
        for rows in rows_by_serial(engine, campaign_id, ("user_id", "serial", "issued_at"), chunk):
            yield [(user, serial, to_ms(issued_at)) for user, serial, issued_at in rows]
        return
    for first, last in serial_ranges(engine, campaign_id, chunk):
        with engine.connect() as conn:
            conn.execute(text(f"SET SESSION group_concat_max_len = {AGGREGATED_MAX}"))
            rows, joined = conn.execute(AGGREGATED_CLAIMS, dict(
                campaign=campaign_id, first=first, last=last)).one()
        if not rows:
            continue
        fields = joined.split(" ")
        if len(joined) >= AGGREGATED_MAX or len(fields) != 3 * rows:  # cut short: never restore part
            raise CouponError(f"campaign {campaign_id}: only {len(fields) // 3} of {rows} rows read "
                              f"from serial {first}: the aggregated string was cut short")
        fields = iter(fields)
        yield sorted(((user, int(serial), int(at)) for user, serial, at in zip(fields, fields, fields)),
                     key=itemgetter(1))


def list_campaigns(svc):
    with svc.engine.connect() as conn:
        ids = conn.execute(select(db.campaigns.c.id).order_by(db.campaigns.c.id)).scalars().all()
    return [campaign_status(svc, i) for i in ids]


def find_ticket(svc, campaign_id, user_id):
    """Return the user's Ticket: from Redis while the campaign is live, else from the database.

    Counted against the user's rate limit."""
    keys = svc.keys(campaign_id)
    shard = keys.shard(keys.shard_of(user_id))
    try:
        live = holds(svc.redis, keys)
        if not live:
            campaign_row(svc.engine, campaign_id)  # CAMPAIGN_NOT_FOUND before a key is written for it
        svc.rate_limit.count_lookup(svc.scripts, shard, user_id)
        held = stored_claim(svc.redis, keys, user_id)
    except RedisError:
        raise Unavailable() from None
    if held:
        code = svc.signer.ticket_code(campaign_id, held.serial)
        return Ticket(campaign_id, user_id, held.serial, code, held.issued_at_ms, new=False)
    if live:
        raise NoTicket()
    with svc.engine.connect() as conn:
        row = conn.execute(
            select(db.coupons).where(
                db.coupons.c.campaign_id == campaign_id, db.coupons.c.user_id == user_id
            )
        ).first()
    if row is None:
        raise NoTicket()
    return Ticket(campaign_id, user_id, row.serial, row.code, to_ms(row.issued_at), new=False)


def sale_span(engine, row):
    """(when the sale of a campaigns row opened, its last coupon's issued_at; None if no row).

    Read from the two ends of the index on (campaign_id, issued_at)."""
    c = db.coupons.c
    with engine.connect() as conn:
        first, last = conn.execute(select(func.min(c.issued_at), func.max(c.issued_at))
                                   .where(c.campaign_id == row.id)).one()
    return row.opens_at or first, last


def seconds_between(opened, last):
    """Seconds from a sale's opening to a coupon (0 for one stamped before it), to the ms."""
    return max(0.0, round((last - opened).total_seconds(), 3))


def epoch_second(column, dialect):
    """SQL: a column of naive UTC datetimes as whole epoch seconds, computed by the database."""
    if dialect == "sqlite":
        return cast(func.strftime("%s", column), Integer)
    # TIMESTAMPDIFF does not depend on the session's time zone (UNIX_TIMESTAMP would)
    return func.timestampdiff(text("SECOND"), EPOCH, column)


def step_of(seconds):
    """Seconds a step of a sale this long: one, or several so that it has REPLAY_POINTS at most."""
    return max(1, math.ceil(seconds / REPLAY_POINTS))


def issues_per_step(engine, campaign_id, start, steps, step):
    """Coupons issued in each of `steps` steps of `step` seconds from epoch second `start`.

    Counted by the database: GROUP BY the step, one row a step, never the coupons' rows. Rows
    stamped before `start` count in the first step; none after the last step is counted."""
    c = db.coupons.c
    with engine.connect() as conn:
        index = ((epoch_second(c.issued_at, conn.dialect.name) - start) // step).label("step")
        counts = conn.execute(
            select(index, func.count())
            .where(c.campaign_id == campaign_id, c.issued_at < from_ms((start + steps * step) * 1000))
            .group_by(index)).all()
    return into_steps({start + int(i) * step: n for i, n in counts}, start, steps, step)


def into_steps(per_second, start, steps, step):
    """{epoch second: coupons} as `steps` steps of `step` seconds from epoch second `start`.

    Those before `start` count in the first step, none after the last step."""
    issues = [0] * steps
    for second, n in per_second.items():
        i = (second - start) // step
        if i < steps:
            issues[max(0, i)] += n
    return issues


def sale_replay(engine, row, per_second=None):
    """The sale of a campaigns row: its coupons per step, and the seconds it took to sell out.

    The steps (a second, or several in a long sale) run from its opening to its last coupon; the
    seconds to sell out are None unless every coupon is in a row. Counted by the database from the
    index of issued_at (never the rows), or from `per_second` ({epoch second: coupons}:
    redis_state.issues_per_second) when given; the ends of the sale from that index either way (call
    it once every claim is in a row)."""
    opened, last = sale_span(engine, row)
    issues, step = [], 1
    if last is not None:
        start = to_ms(opened) // 1000
        step = step_of(to_ms(last) // 1000 + 1 - start)
        steps = max(1, (to_ms(last) // 1000 - start) // step + 1)  # rows before the opening: the first
        issues = (issues_per_step(engine, row.id, start, steps, step) if per_second is None
                  else into_steps(per_second, start, steps, step))
    rows = sum(issues)  # every row: the steps run to the last one
    return {"rows": rows, "opened_at": iso(opened), "step_seconds": step, "issues": issues,
            "sold_out_after_seconds": seconds_between(opened, last) if rows and rows >= row.total else None}


def close_report(engine, campaign_id):
    """What the campaign's last close recorded (db.close_reports), its replay decoded; or None."""
    r = db.close_reports.c
    with engine.connect() as conn:
        record = conn.execute(select(db.close_reports).where(r.campaign_id == campaign_id)).first()
    if record is None:
        return None
    return dict(record._mapping, replay=json.loads(record.replay) if record.replay else None)
