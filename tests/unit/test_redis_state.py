"""The meta hash and shard state as written and read back (every value comes back a string)."""
import datetime as dt

from coupon.keys import bucket_count
from coupon.redis_state import Layout, Meta, meta_fields, shard_state


def as_redis_returns(fields):
    return {name: str(value) for name, value in fields.items()}


def test_a_new_layout_has_the_buckets_of_its_total_and_reads_back_from_a_hash():
    layout = Layout.new(1_000_000, 12)
    assert len(layout.epoch) == 12 and layout.buckets == bucket_count(1_000_000, 12) == 1303
    assert Layout.of(as_redis_returns(layout.fields())) == layout
    assert Layout.of({}) is None and Layout.of({"status": "closed"}) is None


def test_the_meta_hash_reads_back_as_written():
    layout = Layout("0123456789ab", 7, 1_700_000_000_000)
    opens, closes = dt.datetime(2026, 1, 2, 3, 4, 5), dt.datetime(2026, 1, 3)
    fields = as_redis_returns({**meta_fields(100, "open", opens, closes, layout), "cursor": 12,
                               "wanted": 1_767_323_045_500})
    assert Meta.decode(fields) == ("open", 1_767_323_045_000, 1_767_398_400_000, 1_767_323_045_500, layout)
    assert Meta.decode(as_redis_returns(meta_fields(5, "pending", None, None, layout))) == (
        "pending", 0, 0, 0, layout)


def test_a_shard_state_holds_its_counts_the_layout_and_a_closing_time_only_if_there_is_one():
    layout = Layout("0123456789ab", 7, 1_700_000_000_000)
    assert shard_state(3, None, layout) == {"issued": 3, "flushed": 3, **layout.fields()}
    assert shard_state(0, dt.datetime(2026, 1, 3), layout)["closes_at"] == 1_767_398_400_000
    assert Layout.of(as_redis_returns(shard_state(3, None, layout))) == layout
