"""Readiness: whether this process can serve, check by check (/readyz, the operators' page)."""
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError


def readiness(svc):
    """{"redis": "ok" or "down: <error>", "database": the same}; on a cluster also one entry
    per master ("redis host:port"), and "redis" is ok only while every master is (and, with
    REDIS_REPLICA_ACKS, has that many replicas keeping up)."""
    checks = {"redis": "ok"}
    try:
        primaries = svc.redis.primaries()
    except RedisError as e:
        primaries, checks["redis"] = {}, f"down: {type(e).__name__}"
    for name, node in primaries.items():  # every master: one down stops its users' sales
        try:
            state = "ok"
            if svc.redis.replica_acks:  # a master short of replicas acknowledges nothing
                info = node.info("replication")
                replicas = int(info.get("min_slaves_good_slaves", info.get("connected_slaves", 0)))
                if replicas < svc.redis.replica_acks:
                    state = f"down: {replicas} of {svc.redis.replica_acks} replicas"
            else:
                node.ping()
        except RedisError as e:
            state = f"down: {type(e).__name__}"
            svc.redis.refresh()  # a master gone: its replica may serve by the next look
        if svc.redis.cluster:
            checks[f"redis {name}"] = state
        if state != "ok":
            checks["redis"] = f"down: master {name}" if svc.redis.cluster else state
    try:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except SQLAlchemyError as e:
        checks["database"] = f"down: {type(e).__name__}"
    return checks
