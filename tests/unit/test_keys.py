"""Key names: claim shard tags on evenly spaced slots, a user's shard, a campaign's keys."""
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from coupon.keys import BUCKET_FILL, CampaignKeys, bucket_count, shard_tag

TAG = re.compile(r"\{(s(\d+)\.\d+)\}")
shard_counts = st.integers(1, 128)


def slot_of_tag(tag):
    return key_slot(TAG.fullmatch(tag).group(1).encode())


@given(shards=shard_counts, data=st.data())
def test_a_shard_tag_falls_near_its_evenly_spaced_slot(shards, data):
    k = data.draw(st.integers(0, shards - 1))
    tag = shard_tag(k, shards)
    match = TAG.fullmatch(tag)
    assert match and int(match.group(2)) == k, tag
    spacing = REDIS_CLUSTER_HASH_SLOTS / shards
    assert abs(slot_of_tag(tag) - (k + 0.5) * spacing) <= max(1.0, spacing / 8)


@given(shards=st.integers(2, 128))
def test_a_campaigns_shards_are_in_slot_order_about_one_spacing_apart(shards):
    slots = [slot_of_tag(shard_tag(k, shards)) for k in range(shards)]
    spacing = REDIS_CLUSTER_HASH_SLOTS / shards
    gaps = [b - a for a, b in zip(slots, slots[1:])]
    assert all(spacing * 0.75 - 2 <= gap <= spacing * 1.25 + 2 for gap in gaps), (spacing, gaps)


@pytest.mark.parametrize("masters", [2, 3, 4, 6])
def test_twelve_shards_split_evenly_over_masters_of_contiguous_slot_ranges(masters):
    """As redis-cli --cluster create splits the slots: master m owns [m, m + 1) * 16384 / masters."""
    per_master = [0] * masters
    for k in range(12):
        per_master[slot_of_tag(shard_tag(k, 12)) * masters // REDIS_CLUSTER_HASH_SLOTS] += 1
    assert per_master == [12 // masters] * masters


def test_the_shards_of_every_campaign_use_the_same_tags():
    """The slot of a shard does not depend on the campaign: the claims of every campaign spread
    the same way (and the tags pairing up under CRC16, as {c:ID:sK} did, cannot come back)."""
    tags = {tuple(shard.prefix.split(":")[0] for shard in CampaignKeys(c, 12).all_shards())
            for c in (1, 7, 123456)}
    assert tags == {tuple(shard_tag(k, 12) for k in range(12))}


@given(campaign_id=st.integers(1, 2**31 - 1), shards=st.integers(1, 32), buckets=st.integers(1, 50))
def test_every_key_of_a_shard_is_in_its_tags_slot_and_the_home_keys_share_one(campaign_id, shards, buckets):
    keys = CampaignKeys(campaign_id, shards)
    assert {key_slot(key.encode()) for key in [*keys.home_keys(), keys.arrivals]} == {
        key_slot(b"c:%d" % campaign_id)}
    for k, shard in enumerate(keys.all_shards()):
        slot = slot_of_tag(shard_tag(k, shards))
        every_of_shard = [*shard.all(buckets), shard.rate(12345), shard.news, shard.drained]
        assert {key_slot(key.encode()) for key in every_of_shard} == {slot}
        assert all(f":c:{campaign_id}:" in key for key in shard.all(buckets))  # whose keys these are
        assert shard.all(buckets)[-1] == shard.state  # deleted after its buckets
    every = keys.every_key(buckets)
    assert len(every) == len(set(every)) == 7 + (4 + buckets) * shards


@given(user_id=st.text(min_size=1, max_size=64), shards=st.integers(1, 64), buckets=st.integers(1, 10**5))
def test_a_users_bucket_is_in_range_in_the_users_shard_and_the_same_every_time(user_id, shards, buckets):
    keys = CampaignKeys(1, shards)
    i = keys.bucket_of(user_id, buckets)
    assert 0 <= i < buckets
    assert CampaignKeys(99, shards).bucket_of(user_id, buckets) == i
    assert keys.claims_of(user_id, buckets) == keys.shard(keys.shard_of(user_id)).bucket(i)


def test_a_million_users_fill_the_buckets_of_their_total_evenly_and_none_past_128():
    """Past hash-max-listpack-entries (128 at the least we count on) a bucket is a plain hash."""
    keys, total = CampaignKeys(1, 12), 1_000_000
    buckets = bucket_count(total, 12)
    fill = [0] * (12 * buckets)
    for i in range(1, total + 1):
        user = f"u{i}"
        fill[keys.shard_of(user) * buckets + keys.bucket_of(user, buckets)] += 1
    assert min(fill) >= BUCKET_FILL / 2 and max(fill) <= 100, (min(fill), max(fill))


@given(total=st.integers(1, 10_000_000), shards=st.integers(1, 64))
def test_the_buckets_hold_at_most_bucket_fill_claims_each_on_average_at_the_total(total, shards):
    buckets = bucket_count(total, shards)
    assert buckets >= 1 and total / (shards * buckets) <= BUCKET_FILL
    assert buckets == 1 or total / (shards * (buckets - 1)) > BUCKET_FILL  # no more than that


@given(user_id=st.text(min_size=1, max_size=64), shards=st.integers(1, 64))
def test_a_users_shard_is_in_range_and_the_same_every_time(user_id, shards):
    k = CampaignKeys(1, shards).shard_of(user_id)
    assert 0 <= k < shards
    assert CampaignKeys(99, shards).shard_of(user_id) == k  # whatever the campaign, whoever asks


def test_users_spread_evenly_over_the_shards():
    keys = CampaignKeys(1, 12)
    counts = [0] * 12
    for i in range(12_000):
        counts[keys.shard_of(f"user{i:05d}")] += 1
    assert min(counts) >= 900 and max(counts) <= 1100, counts
