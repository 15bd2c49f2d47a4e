"""The MySQL schema (SQLite for a first run) and the engine."""
import os

from sqlalchemy import (
    BigInteger, Boolean, Column, DateTime, Index, Integer, MetaData, String, Table, Text,
    UniqueConstraint, create_engine, event,
)
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import make_url

metadata = MetaData()
MAX_ID = 2**31 - 1  # ids are INTEGER columns: anything above names no row
MILLIS = DateTime().with_variant(mysql.DATETIME(fsp=3), "mysql", "mariadb")  # ticket times in ms

campaigns = Table(
    "campaigns",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("total", Integer, nullable=False),
    # pending (waits for `open`), scheduled (opens at opens_at), open, closed
    Column("status", String(16), nullable=False),
    Column("opens_at", DateTime),
    Column("closes_at", DateTime),
    Column("issued", Integer, nullable=False, default=0),  # written by the stock sync job
    Column("created_at", DateTime, nullable=False),
    Column("closed_at", DateTime),
)

coupons = Table(
    "coupons",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("campaign_id", Integer, nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("serial", Integer, nullable=False),
    Column("code", String(32), nullable=False),
    Column("issued_at", MILLIS, nullable=False),
    UniqueConstraint("campaign_id", "user_id", name="uq_coupon_user"),
    UniqueConstraint("campaign_id", "serial", name="uq_coupon_serial"),
    # the operators' page: a sale's first and last coupon, and its coupons per second, read from
    # this index alone (without it, a full scan of the table: 1.1 s at a million rows)
    Index("ix_coupon_issued_at", "campaign_id", "issued_at"),
    mysql_engine="InnoDB",
)

# the last close of each campaign: what its reconciliation found and, once Redis and the
# database agreed, the sale's replay, so that the operators' page reads them, never computes them
close_reports = Table(
    "close_reports",
    metadata,
    Column("campaign_id", Integer, primary_key=True, autoincrement=False),
    Column("reconciled_at", DateTime, nullable=False),
    Column("agree", Boolean, nullable=False),
    Column("report", Text, nullable=False),  # reconcile.Report.lines(), one a line
    Column("replay", Text),  # queries.sale_replay() as JSON, when they agreed
    mysql_engine="InnoDB",
)


# add-stock: one row per addition, so that an addition asked again (same request id) adds nothing
stock_additions = Table(
    "stock_additions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("campaign_id", Integer, nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("amount", Integer, nullable=False),
    Column("total_after", Integer, nullable=False),  # the campaign's total once it was added
    Column("added_at", DateTime, nullable=False),
    UniqueConstraint("campaign_id", "request_id", name="uq_stock_request"),
    mysql_engine="InnoDB",
)


# events still to publish (coupon/events.py): written in the transaction of what they tell of (a
# coupon row, a campaign's change), deleted once the broker confirmed them; read in id order
event_outbox = Table(
    "event_outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("message_id", String(128), nullable=False),  # stable: consumers drop repeats by it
    Column("campaign_id", Integer, nullable=False),
    Column("routing_key", String(64), nullable=False),
    Column("body", Text, nullable=False),  # JSON
    Column("created_at", MILLIS, nullable=False),
    UniqueConstraint("message_id", name="uq_event_message"),
    Index("ix_event_campaign", "campaign_id"),  # a campaign's events still to go (status, close)
    mysql_engine="InnoDB",
)

# coupon.issued events still to publish: the key of a coupon, written in the transaction of its
# row; the publisher builds the message from the coupon row (its age: the coupon's issued_at).
# Two integers and no other index: the wide row with its JSON body halved the flush's rate
# (BENCHMARKS.md, "Events"); keyed by what the message id is made of, so a replayed entry's is
# skipped
issued_events = Table(
    "issued_events",
    metadata,
    Column("campaign_id", Integer, primary_key=True, autoincrement=False),
    Column("serial", Integer, primary_key=True, autoincrement=False),
    mysql_engine="InnoDB",
)


def insert_ignoring_duplicates(dialect_name, table):
    """INSERT into `table` that skips rows clashing with a unique key and fails on anything else."""
    if dialect_name in ("mysql", "mariadb"):
        stmt = mysql.insert(table)
        key = table.primary_key.columns[0].name
        return stmt.on_duplicate_key_update({key: stmt.inserted[key]})  # a no-op update: keep the row
    if dialect_name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"no duplicate-ignoring insert for {dialect_name}")


def insert_integers_ignoring_duplicates(conn, table, rows):
    """INSERT `rows` into `table` as one statement, skipping rows clashing with a unique key.

    `rows` are tuples of integers, the table's columns in order; the statement is written out
    here. For the thousands of rows of a flush round, an executemany's handling of each parameter
    cost ~12 us a row, more than the database's work; integers need no escaping."""
    if not rows:
        return
    skip = {"sqlite": "ON CONFLICT DO NOTHING"}.get(
        conn.dialect.name, f"ON DUPLICATE KEY UPDATE {table.c[0].name} = {table.c[0].name}")
    values = ",".join("(" + ",".join(str(int(v)) for v in row) + ")" for row in rows)
    conn.exec_driver_sql(f"INSERT INTO {table.name} ({', '.join(table.c.keys())}) VALUES {values} {skip}")


def make_engine(url):
    """Create the engine; for SQLite, create the file's folder and let threads share it."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _wal(dbapi_conn, _):
            dbapi_conn.execute("PRAGMA journal_mode=WAL")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_recycle=3600, pool_size=5, max_overflow=10)


def init_db(engine):
    """Create the tables and indexes that do not exist yet (idempotent)."""
    metadata.create_all(engine)
    for index in coupons.indexes:  # create_all skips a table that exists, and so its new indexes
        index.create(engine, checkfirst=True)
