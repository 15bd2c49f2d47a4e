"""What may be sent again does its work once, in this process against the real Redis: a lease
asked again under the same lease id (as a worker does after a lease short of replica
acknowledgements) answers the same serials; serials leased before a new epoch are never claimed.
Against a private master and replica: e2e/test_replica_acks.py."""
from coupon.scripts import LeaseOutcome, decode_serials
from loadtest.harness import open_campaign
from tests.support import issue, on_single_and_cluster


@on_single_and_cluster
def test_a_lease_asked_again_answers_the_same_serials(svc, redis_client):
    big = svc.keys(open_campaign(svc, 5000))
    tail = svc.keys(open_campaign(svc, 10))  # all of it within SINGLE_LEASE_TAIL
    for keys, waiting in ((big, 0), (tail, 3)):
        epoch = redis_client.hget(keys.meta, "epoch")
        ask = lambda lease_id: svc.scripts.lease(keys, epoch, lease_id, 2000, 30_000, 64, waiting)  # noqa: E731
        first, again = ask("w:1"), ask("w:1")
        assert first.outcome is LeaseOutcome.LEASED and again == first
        assert first.tail is (keys is tail)
        cursor = int(redis_client.hget(keys.meta, "cursor"))
        assert cursor == max(first.serials)  # leased once
        assert ask("w:2").serials != first.serials
        redis_client.zadd(keys.leases, {"w:1": 1})  # expired: its serials may be reclaimed
        assert ask("w:1").outcome is LeaseOutcome.EXPIRED
    assert svc.scripts.lease(big, "another epoch", "w:3", 10, 30_000, 64, 0).outcome is LeaseOutcome.UNKNOWN


def test_serials_leased_before_a_new_epoch_are_never_claimed(svc, client, redis_client, signer):
    # what `flask campaign recover` does to a worker that loaded the campaign before Redis lost it
    campaign_id = open_campaign(svc, 1000)
    keys = svc.keys(campaign_id)
    assert issue(client, campaign_id, signer.mint("a")).status_code == 201
    (old_lease,) = redis_client.hgetall(keys.lease_serials).values()
    for key in [keys.meta, *(shard.state for shard in keys.all_shards())]:
        redis_client.hset(key, "epoch", "new")
    second = issue(client, campaign_id, signer.mint("b"))  # stale: loaded again, then issued
    assert second.status_code == 201
    assert second.json["serial"] not in decode_serials(old_lease)
    assert len(redis_client.hgetall(keys.lease_serials)) == 2  # a lease of the new epoch
