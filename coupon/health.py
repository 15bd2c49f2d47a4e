"""Readiness: whether this process can serve, check by check.

Its readers: /readyz, the operators' page, the coupon_ready gauges of /metrics."""
from typing import NamedTuple

from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError


class Readiness(NamedTuple):
    checks: dict  # what readiness() returns
    replicas: dict  # master name -> replicas keeping up with it, of the masters that answered


def readiness(svc):
    """Readiness check by check: {"redis": ..., "redis settings": ..., "database": ...}.

    "redis": "ok" or "down: <error>"; "redis settings": "ok" or, in production, what in Redis's
    settings would lose claims (redis_guard); "database": as "redis". On a cluster also one entry
    per master ("redis host:port"), and "redis" is ok only while every master is (and, with
    REDIS_REPLICA_ACKS, has that many replicas keeping up)."""
    return check_readiness(svc).checks


def check_readiness(svc):
    """The checks of readiness() and each master's replicas.

    They cost one INFO per master, one SELECT 1 (and the settings' verdict, read every few
    seconds)."""
    checks, replicas = check_redis(svc)
    checks["database"] = check_database(svc.engine)
    return Readiness(checks, replicas)


def check_redis(svc):
    """The Redis checks of readiness() (every one but "database") and each master's replicas."""
    checks, replicas = {"redis": "ok"}, {}
    try:
        primaries = svc.redis.primaries()
    except RedisError as e:
        primaries, checks["redis"] = {}, f"down: {type(e).__name__}"
    for name, node in primaries.items():  # every master: one down stops its users' sales
        try:
            state = "ok"
            info = node.info("replication")  # as cheap as a PING, and it counts the replicas
            # min_slaves_good_slaves: those within min-replicas-max-lag, when the master sets it
            replicas[name] = int(info.get("min_slaves_good_slaves", info.get("connected_slaves", 0)))
            if replicas[name] < svc.redis.replica_acks:  # short of replicas it acknowledges nothing
                state = f"down: {replicas[name]} of {svc.redis.replica_acks} replicas"
        except RedisError as e:
            state = f"down: {type(e).__name__}"
            svc.redis.refresh()  # a master gone: its replica may serve by the next look
        if svc.redis.cluster:
            checks[f"redis {name}"] = state
        if state != "ok":
            checks["redis"] = f"down: master {name}" if svc.redis.cluster else state
    verdict = svc.redis_guard.verdict()  # cached: read every few seconds, not per call
    checks["redis settings"] = "; ".join(verdict.problems) if verdict.refuses else "ok"
    return checks, replicas


def check_database(engine):
    """"ok", or "down: <error>": whether the database answers a SELECT 1."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return "ok"
    except SQLAlchemyError as e:
        return f"down: {type(e).__name__}"
