"""How fair a sale was, from the service's own arrival stamps (coupon/arrival.py).

Each worker notes, per campaign, the latest arrival it issued a new ticket to and when the
requests it refused SOLD_OUT arrived (ArrivalLog, written to the campaign's arrivals hash every
NOTE_EVERY by note_arrivals.lua). A close reads them (SaleOrder): the last coupon's request is
the latest winning arrival of any worker; a refusal that arrived before it was refused although
a later request got a coupon, which first come, first served should not do (50 ms or more ahead:
more than a person or network jitter can tell apart).
"""
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from coupon.clock import iso_ms

NOTE_EVERY = 0.1  # seconds between a worker's notes of a campaign to Redis
PLAIN_LEAD_MS = 50  # a refusal this far ahead of the last coupon's request is plainly unfair


class ArrivalLog:
    """One per worker: what it saw of each sale's order, written to Redis in the background."""

    def __init__(self, scripts, keys_of, worker_id):
        self.scripts = scripts
        self.keys_of = keys_of  # campaign id -> keys.CampaignKeys
        self.worker_id = worker_id
        self._wins = {}  # campaign id -> latest winning arrival not yet noted
        self._refused = {}  # campaign id -> Counter(arrival ms -> refusals) not yet noted
        self._lock = threading.Lock()
        self._writer = None

    def note(self, campaign_id, outcome, arrival):
        """Note an issue request's outcome (NEW, SOLD_OUT; others are not noted) and arrival."""
        if outcome == "NEW":
            with self._lock:
                self._wins[campaign_id] = max(arrival, self._wins.get(campaign_id, arrival))
        elif outcome == "SOLD_OUT":
            with self._lock:
                self._refused.setdefault(campaign_id, Counter())[int(arrival)] += 1
        else:
            return
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_while_noted, daemon=True,
                                            name="arrival-log")
            self._writer.start()

    def _write_while_noted(self):
        """Every NOTE_EVERY, write what was noted meanwhile (in one call); end after a quiet one.

        One thread while notes come, not one a write: a thread's start cost about 0.6 % of a
        worker's time under new tickets (BENCHMARKS.md, "What a new ticket costs the web worker")."""
        while True:
            time.sleep(NOTE_EVERY)
            with self._lock:
                if not self._wins and not self._refused:
                    self._writer = None  # a note from now on starts another
                    return
            self.write()

    def write(self):
        """Write what was noted to Redis; what fails to be written is lost (a figure for people)."""
        with self._lock:
            wins, refused, self._wins, self._refused = self._wins, self._refused, {}, {}
        for campaign_id in wins.keys() | refused.keys():
            try:
                self.scripts.note_arrivals(self.keys_of(campaign_id), self.worker_id,
                                           wins.get(campaign_id), refused.get(campaign_id, {}))
            except RedisError:
                pass


@dataclass
class SaleOrder:
    """How a sale's coupons were given out against the order its requests arrived in."""

    last_win: float = None  # the arrival of the last coupon's request (epoch ms, Redis's clock)
    refused_ahead: int = 0  # refused SOLD_OUT although they arrived before it
    refused_plainly: int = 0  # of those, PLAIN_LEAD_MS or more before it
    max_lead_ms: float = 0.0  # how long before it the earliest of those arrived
    refused: int = 0  # refused SOLD_OUT in all
    by_ms: dict = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, redis, keys):
        return cls.of_fields(redis.hgetall(keys.arrivals))

    @classmethod
    def of_fields(cls, fields):
        """From the campaign's arrivals hash (note_arrivals.lua)."""
        wins = [float(v) for k, v in fields.items() if k.startswith("w:")]
        refused = {int(k[2:]): int(v) for k, v in fields.items() if k.startswith("r:")}
        return cls.of(max(wins) if wins else None, refused)

    @classmethod
    def of(cls, last_win, refused):
        """From the last coupon's arrival (None: no coupon) and refusals {arrival ms: count}."""
        order = cls(last_win, refused=sum(refused.values()), by_ms=refused)
        if last_win is None:
            return order
        ahead = {ms: n for ms, n in refused.items() if ms < int(last_win)}
        order.refused_ahead = sum(ahead.values())
        order.refused_plainly = sum(n for ms, n in ahead.items() if ms + 1 <= last_win - PLAIN_LEAD_MS)
        order.max_lead_ms = round(last_win - min(ahead), 1) if ahead else 0.0
        return order

    def figures(self):
        """As JSON (flask campaign status)."""
        return {"refused_sold_out": self.refused, "refused_ahead": self.refused_ahead,
                f"refused_ahead_{PLAIN_LEAD_MS}ms": self.refused_plainly,
                "max_lead_ms": self.max_lead_ms,
                "last_winning_arrival": None if self.last_win is None else iso_ms(int(self.last_win))}

    def lines(self):
        if self.last_win is None:
            return [f"order: no coupon issued; {self.refused} refused SOLD_OUT"]
        return [f"order: {self.refused_ahead} of {self.refused} refused SOLD_OUT arrived before the "
                f"last coupon's request ({self.refused_plainly} of them {PLAIN_LEAD_MS} ms or more "
                f"before it; the earliest {self.max_lead_ms:g} ms before)"]
