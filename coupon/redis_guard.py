"""Whether the Redis the service runs on keeps every claim it acknowledges.

It is read from each master's INFO at start and every CHECK_EVERY seconds after (web workers, the
scheduler, the CLI).

A claim Redis evicts, or loses in a restart, is a coupon a user was told they got and that may
never reach the database. So, on every master:
- maxmemory-policy must be noeviction: any other policy evicts keys under memory pressure (the
  volatile-* ones too: the leader lease and the rate limits carry a TTL);
- Redis must be MIN_VERSION or newer, for the scripts;
- in production a single Redis must keep an append-only file (a cluster has its replicas, WAIT).

In development a problem is a warning, logged once; in production it also makes /readyz answer 503
naming it, and keeps the scheduler from acting, until Redis is fixed (no restart needed). Only INFO
is read, never CONFIG, which managed Redis services hide; what INFO does not tell (refused by an
ACL, a field missing) is said to be unchecked, and refuses nothing.
"""
import logging
import threading
import time
from typing import NamedTuple

from redis.exceptions import RedisError, ResponseError

log = logging.getLogger("coupon")

# LPOP with a count (lease.lua) and XAUTOCLAIM (the flush job) came in Redis 6.2
MIN_VERSION = (6, 2)
CHECK_EVERY = 5.0  # seconds a verdict is reused: /readyz and every job run ask


def setting_problems(name, info, production, cluster):
    """What one master's INFO says would lose claims: (problems, unchecked).

    The INFO is its fields, as redis-py parses them; problems and unchecked are each a list of
    sentences naming `name`, the setting and the fix."""
    problems, unchecked = [], []
    version = info.get("redis_version")
    try:
        numbers = tuple(int(part) for part in str(version).split(".")[:2])
    except ValueError:
        numbers = None
    if not numbers:
        unchecked.append(f"Redis {name}: its version could not be checked (INFO says {version!r})")
    elif numbers < MIN_VERSION:
        needed = ".".join(map(str, MIN_VERSION))
        problems.append(f"Redis {name} is version {version}; the scripts need {needed} or newer "
                        "(LPOP with a count, XAUTOCLAIM): upgrade it")
    policy = info.get("maxmemory_policy")
    if policy is None:
        unchecked.append(f"Redis {name}: maxmemory-policy could not be checked (INFO does not say it); "
                         "make sure it is noeviction")
    elif policy != "noeviction":
        problems.append(f"Redis {name} has maxmemory-policy {policy}: under memory pressure it evicts "
                        "keys, claims among them; set maxmemory-policy noeviction")
    if production and not cluster:
        aof = info.get("aof_enabled")
        if aof is None:
            unchecked.append(f"Redis {name}: appendonly could not be checked (INFO does not say it); "
                             "make sure it is yes")
        elif not int(aof):
            problems.append(f"Redis {name} has appendonly no: a restart loses every claim not yet in "
                            "the database; set appendonly yes (appendfsync everysec or always)")
    return problems, unchecked


class Verdict(NamedTuple):
    problems: tuple = ()  # sentences: what would lose claims, and the fix
    unchecked: tuple = ()  # sentences: what could not be checked
    refuses: bool = False  # production and problems: not ready, the scheduler idle

    @property
    def warnings(self):
        """What to say without refusing: the problems in development, the unchecked always."""
        return self.unchecked if self.refuses else self.problems + self.unchecked


class RedisGuard:
    """The verdict on the Redis of `nodes`, read at most every CHECK_EVERY seconds.

    `nodes` is a redis_nodes.RedisNodes. Each new sentence is logged once, and its end when it goes
    away."""

    def __init__(self, nodes, production):
        self.nodes = nodes
        self.production = production
        self._verdict = Verdict()
        self._checked_at = None  # monotonic; None: never
        self._lock = threading.Lock()
        self._by_node = {}  # master -> (problems, unchecked) when it last answered

    def verdict(self):
        """The verdict, read again if it is older than CHECK_EVERY.

        One caller reads it again; the others meanwhile take the last one."""
        due = self._checked_at is None or time.monotonic() - self._checked_at >= CHECK_EVERY
        if due and self._lock.acquire(blocking=self._checked_at is None):
            try:
                self._checked_at = time.monotonic()
                self._say(self._read())
            finally:
                self._lock.release()
        return self._verdict

    def _read(self):
        """The verdict of every master; a master that does not answer keeps its last one."""
        try:
            masters = self.nodes.primaries()
        except RedisError:
            return None  # unreachable: readiness says so
        self._by_node = {name: said for name, said in self._by_node.items() if name in masters}
        for name, client in masters.items():
            where = name if self.nodes.cluster else _address(client)
            try:
                info = client.info()
            except ResponseError as e:  # an ACL, a renamed command
                self._by_node[name] = ([], [f"Redis {where}: the version, maxmemory-policy and "
                                            f"appendonly could not be checked: INFO refused ({e})"])
                continue
            except RedisError:
                continue  # down: readiness says so
            self._by_node[name] = setting_problems(where, info, self.production, self.nodes.cluster)
        problems = tuple(p for found, _ in self._by_node.values() for p in found)
        unchecked = tuple(u for _, unknown in self._by_node.values() for u in unknown)
        return Verdict(problems, unchecked, self.production and bool(problems))

    def _say(self, verdict):
        if verdict is None:
            return
        before, self._verdict = self._verdict, verdict
        level = logging.ERROR if verdict.refuses else logging.WARNING
        for sentence in verdict.problems:
            if sentence not in before.problems:
                log.log(level, "%s%s", sentence, "; until then this service is not ready and the "
                        "scheduler does not act (ENV=production)" if verdict.refuses else "")
        for sentence in verdict.unchecked:
            if sentence not in before.unchecked:
                log.warning("%s", sentence)
        for sentence in before.problems:
            if sentence not in verdict.problems:
                log.warning("fixed: %s", sentence)


def _address(client):
    """host:port (or the socket path) of a plain client: what an operator knows a single Redis by."""
    kwargs = client.connection_pool.connection_kwargs
    return kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
