"""The operators' page's list of campaigns from rows read earlier (ops_readers.Listing), split by
the campaigns Redis holds now."""
from datetime import datetime, timedelta
from typing import NamedTuple

from coupon.ops_readers import RECENT_CLOSED, Listing

T0 = datetime(2026, 12, 4, 12, 0, 0)


class Row(NamedTuple):  # the columns of a campaigns row the split reads
    id: int
    status: str
    closed_at: datetime = None


def closed(campaign_id, minute):
    return Row(campaign_id, "closed", T0 + timedelta(minutes=minute))


def ids(rows):
    return [row.id for row in rows]


def test_the_split_of_the_campaigns_redis_held_when_read():
    listing = Listing(0.0, {3: Row(3, "open"), 7: Row(7, "paused"), 5: Row(5, "open")},
                      [closed(2, 9), closed(1, 4)])
    held, recent = listing.split([5, 3, 7])
    assert (ids(held), ids(recent)) == ([7, 5, 3], [2, 1])


def test_a_campaign_released_since_the_read_leaves_the_held_and_a_closed_one_joins_the_closed():
    # 8 was closing when read (closed, Redis still held it); 5 was open: released since, its row
    # as read says nothing of its close, so it waits for the next read
    listing = Listing(0.0, {8: closed(8, 6), 5: Row(5, "open"), 3: Row(3, "open")}, [closed(2, 9), closed(1, 4)])
    held, recent = listing.split([3])
    assert (ids(held), ids(recent)) == ([3], [2, 8, 1])


def test_a_campaign_opened_since_the_read_waits_for_the_next_one():
    held, recent = Listing(0.0, {3: Row(3, "open")}, []).split([3, 4])
    assert (ids(held), recent) == ([3], [])


def test_redis_down_lists_what_the_database_says_alone():
    listing = Listing(0.0, {8: closed(8, 6), 3: Row(3, "open")}, [closed(2, 9)])
    assert listing.split([]) == ([], [closed(2, 9), closed(8, 6)])


def test_at_most_the_most_recently_closed():
    rows = [closed(i, i) for i in range(RECENT_CLOSED, 0, -1)]
    listing = Listing(0.0, {50: closed(50, 60)}, rows)
    held, recent = listing.split([])
    assert held == [] and ids(recent) == [50] + ids(rows[:RECENT_CLOSED - 1])
