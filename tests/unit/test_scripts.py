"""The Lua protocol's Python side: script replies and stored values decoded, and encoded back."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coupon.campaigns import MAX_STOCK
from coupon.scripts import (
    SERIAL_DIGITS, Claim, ClaimReply, LeaseOutcome, LeaseReply, OutboxEntry, StoredClaim, decode_serials,
)

codes = st.text("0123456789ABCDEF", min_size=20, max_size=20)
serials = st.integers(1, 10_000_000)
times_ms = st.integers(0, 2**42)


# --- claim.lua ---

def code_of(serial):
    return "C%d" % serial


@given(outcome=st.sampled_from([Claim.NEW, Claim.HELD]), serial=serials, issued_at_ms=times_ms,
       as_text=st.booleans())
def test_a_claim_reply_with_a_ticket_decodes_to_it_with_the_code_of_its_serial(
        outcome, serial, issued_at_ms, as_text):
    """Redis answers a Lua number as an integer; a number stored as a string comes back as one."""
    number = str if as_text else int
    reply = ClaimReply.decode([int(outcome), number(serial), number(issued_at_ms)], code_of)
    assert reply == (outcome, serial, code_of(serial), issued_at_ms)
    assert reply.ticket


@pytest.mark.parametrize("outcome", [c for c in Claim if c not in (Claim.NEW, Claim.HELD)])
def test_a_claim_reply_without_a_ticket_is_its_outcome_alone(outcome):
    reply = ClaimReply.decode([int(outcome)], code_of)
    assert reply == (outcome, 0, "", 0)
    assert not reply.ticket


@pytest.mark.parametrize("outcome, unused", [
    (Claim.NEW, False), (Claim.HELD, True), (Claim.SERIAL_TAKEN, False), (Claim.CLOSED, True),
    (Claim.RATE_LIMITED, True), (Claim.NEEDS_SERIAL, False), (Claim.STALE, False),
])
def test_the_offered_serial_is_free_again_exactly_when_claim_lua_left_it_unclaimed(outcome, unused):
    """SERIAL_TAKEN: another claim holds it; NEEDS_SERIAL, STALE: nothing was offered or it is of
    another epoch. Freeing one of those would hand a serial out twice, or one not ours."""
    assert ClaimReply(outcome).serial_unused is unused


def test_an_outcome_claim_lua_does_not_have_is_an_error():
    with pytest.raises(ValueError):
        ClaimReply.decode([99], code_of)


@given(serial=st.integers(1, MAX_STOCK), issued_at_ms=times_ms, time_base=times_ms)
def test_a_stored_claim_encodes_and_decodes_back_at_any_time_from_its_base(serial, issued_at_ms, time_base):
    """Before the base too (recover writes old rows' claims in a new state)."""
    claim = StoredClaim(serial, issued_at_ms)
    assert StoredClaim.decode(claim.encode(time_base), time_base) == claim


def test_a_stored_claim_is_the_time_from_the_base_then_the_serial_in_eight_digits():
    assert StoredClaim.decode("53100000042", 1_700_000_000_000) == (42, 1_700_000_000_531)
    assert StoredClaim(42, 1_700_000_000_531).encode(1_700_000_000_000) == "53100000042"
    assert StoredClaim(10_000_000, 5).encode(5) == "010000000"
    assert StoredClaim(7, 5).encode(9) == "-400000007"


def test_every_serial_fits_a_stored_claims_digits():
    assert len(str(MAX_STOCK)) <= SERIAL_DIGITS


@given(serial=st.integers(1, MAX_STOCK), since_base_ms=st.integers(1, 2 * 365 * 86_400_000))
def test_a_stored_claim_within_two_years_of_its_base_is_a_64_bit_integer(serial, since_base_ms):
    """What a listpack keeps in 9 bytes rather than as a string of up to 19."""
    value = StoredClaim(serial, 1_700_000_000_000 + since_base_ms).encode(1_700_000_000_000)
    assert str(int(value)) == value and int(value) < 2**63


@given(campaign_id=st.integers(1, 2**31 - 1),
       claims=st.dictionaries(serials, st.from_regex(r"[A-Za-z0-9_.:@-]{1,64}", fullmatch=True), min_size=1),
       code=codes, issued_at_ms=times_ms)
def test_an_outbox_entry_decodes_from_its_stream_fields(campaign_id, claims, code, issued_at_ms):
    """An entry holds the new claims of one claim.lua call."""
    fields = {"e": " ".join(f"{user_id} {serial}" for serial, user_id in claims.items()) + f" {issued_at_ms}"}
    codes = {serial: f"{code}{serial}" for serial in claims}.get
    assert OutboxEntry.decode(fields, campaign_id, codes) == [
        (campaign_id, user_id, serial, f"{code}{serial}", issued_at_ms) for serial, user_id in claims.items()]
    # as the version before wrote it (entries still waiting in an outbox after an upgrade)
    serial, user_id = next(iter(claims.items()))
    fields = {"c": str(campaign_id), "u": user_id, "s": str(serial), "k": code, "t": str(issued_at_ms)}
    assert OutboxEntry.decode(fields, 0, None) == [(campaign_id, user_id, serial, code, issued_at_ms)]


# --- lease.lua ---

def test_a_lease_is_its_range_then_the_returned_serials():
    reply = LeaseReply.decode([1, 10, 14, 0, 3, 7])
    assert reply == LeaseReply(LeaseOutcome.LEASED, (10, 11, 12, 13, 14, 3, 7), tail=False)


def test_a_lease_of_returned_serials_only_has_an_empty_range():
    """lease.lua answers start > end when the cursor did not move."""
    assert LeaseReply.decode([1, 0, -1, 0, 5, 6]).serials == (5, 6)
    assert LeaseReply.decode([1, 8, 7, 1, 2]) == LeaseReply(LeaseOutcome.LEASED, (2,), tail=True)


def test_sold_out_says_whether_other_workers_hold_serials():
    assert LeaseReply.decode([0, 0]) == LeaseReply(LeaseOutcome.SOLD_OUT, others_hold=False)
    assert LeaseReply.decode([0, 1]) == LeaseReply(LeaseOutcome.SOLD_OUT, others_hold=True)


def test_bids_in_arrival_order_are_answered_by_id_with_serials_in_turn():
    assert LeaseReply.decode([5, 10, 11, [b"7", b"9", b"12"], 0, 4]) == LeaseReply(
        LeaseOutcome.ORDERED, (10, 11, 4), True, granted=(7, 9, 12))
    # the serials after the granted bids' are ahead, for requests that arrive before the time given
    assert LeaseReply.decode([5, 10, 12, [b"7"], 1_700_000_000_010]) == LeaseReply(
        LeaseOutcome.ORDERED, (10, 11, 12), True, granted=(7,), ahead_until=1_700_000_000_010)
    assert LeaseReply.decode([5, 0, -1, [], 0]) == LeaseReply(LeaseOutcome.ORDERED, (), True)  # all wait
    # none left, some in flight elsewhere: all wait, the holders asked
    assert LeaseReply.decode([6]) == LeaseReply(LeaseOutcome.ORDERED, (), True, others_hold=True)


@pytest.mark.parametrize("raw, outcome", [([-1], LeaseOutcome.UNKNOWN), ([-2], LeaseOutcome.NOT_OPEN),
                                          ([-3], LeaseOutcome.CLOSED), ([-4], LeaseOutcome.EXPIRED)])
def test_a_refusal_is_its_outcome_alone(raw, outcome):
    assert LeaseReply.decode(raw) == LeaseReply(outcome)


# --- the serials a lease records: "start-end[,serial...][,t]" ---

def test_decode_serials_of_ranges_and_single_serials():
    assert decode_serials("1-5,9,12") == [1, 2, 3, 4, 5, 9, 12]
    assert decode_serials("7") == [7]
    assert decode_serials("5-5") == [5]  # a range of one, as lease.lua writes it
    assert decode_serials("") == []


def test_the_tail_marker_is_not_a_serial():
    assert decode_serials("1-3,t") == [1, 2, 3]
    assert decode_serials("4,8,t") == [4, 8]
    assert decode_serials("t") == []


parts = st.lists(st.tuples(serials, st.integers(0, 50)), max_size=8)


@given(parts=parts, tail=st.booleans())
def test_decode_serials_expands_what_lease_lua_records(parts, tail):
    encoded = ",".join(f"{start}-{start + extra}" if extra else f"{start}" for start, extra in parts)
    if tail:
        encoded += ",t"
    expected = [s for start, extra in parts for s in range(start, start + extra + 1)]
    assert decode_serials(encoded) == expected
