"""The recovery report: what was restored, and what the last stock sync says may be lost."""
from hypothesis import given
from hypothesis import strategies as st

from coupon.recovery import RecoveryReport, set_bit


def report(per_shard=(3, 4, 5), last_synced=12, drained=0):
    return RecoveryReport(campaign_id=9, status="open", per_shard=list(per_shard), cursor=20,
                          returned=8, drained=drained, last_synced=last_synced)


@given(per_shard=st.lists(st.integers(0, 10_000), min_size=1, max_size=16),
       last_synced=st.integers(0, 200_000))
def test_possibly_lost_is_what_the_last_sync_counted_beyond_the_rows(per_shard, last_synced):
    recovered = report(per_shard, last_synced)
    assert recovered.rows == sum(per_shard)
    assert recovered.possibly_lost == max(0, last_synced - sum(per_shard))


def test_the_report_of_a_loss():
    lines = report(last_synced=15, drained=2).lines()
    assert lines[0] == ("campaign 9: restored 12 claims from the database (users per claim shard "
                        "3..5), cursor 20, 8 serials returned for issue, status open")
    assert lines[1] == "  first drained 2 claims from the outbox streams Redis still held"
    assert lines[2] == ("  possibly lost: 3 claims: the last stock sync counted 15 issued, the "
                        "database holds 12 rows.")
    assert any("issued again" in line for line in lines[3:6])
    assert lines[-1].startswith("  Not counted: any claims acknowledged after that stock sync")


def test_the_report_without_a_counted_loss_says_none_and_still_warns_of_later_ones():
    for synced in (12, 10):  # as many as the rows, or fewer (rows flushed after the sync)
        lines = report(last_synced=synced).lines()
        assert not any("drained" in line for line in lines)  # nothing drained, nothing said
        assert lines[1] == (f"  possibly lost: none that the last stock sync counted: it counted "
                            f"{synced} issued, the database holds 12 rows.")
        assert lines[2].startswith("  Not counted:")
        assert len(lines) == 3


def test_a_bitmap_built_for_recover_numbers_its_bits_as_setbit_does():
    # SETBIT key 0 1 sets the highest bit of the first byte; SETBIT key 9 1 the second of the next
    bitmap = bytearray()
    for n in (0, 9, 23):
        set_bit(bitmap, n)
    assert bytes(bitmap) == b"\x80\x40\x01"
