"""The fairness benchmark's figures (loadtest/bench_fair.fairness) on handmade runs: no services."""
from loadtest.bench_fair import Answer, Send, fairness, take_answer

MS = 1_000_000


def sends(*ms):
    return [Send(f"u{i}", None if t is None else t * MS) for i, t in enumerate(ms)]


def test_the_figures_of_a_small_unfair_run():
    sent = sends(0, 10, 20, 100, 110)
    answers = [
        Answer("409 SOLD_OUT", None, None, 200 * MS),  # the first sender refused
        Answer("201", 1, "u1", 30 * MS),
        Answer("closed", None, None, 40 * MS),  # not an HTTP answer: no latency
        Answer("201", 2, "u3", 140 * MS),
        Answer("409 SOLD_OUT", None, None, 150 * MS),
    ]
    figures = fairness(sent, answers, stock=2)
    assert figures == {
        "sent": 5,
        "outcomes": {"201": 2, "409 SOLD_OUT": 2, "closed": 1},
        "winners": 2,
        "early_won": 1, "early_share": 0.5, "early_sold_out": 1,
        "early_written_won": 1,  # u0 and u1 written first
        "last_winner_rank": 4,
        "refused_early": 1, "max_lead_ms": 100.0,  # u0, written 100 ms before u3
        "p50_ms": 40.0, "p99_ms": 200.0,  # of 20, 40, 40, 200 ms
        "win_p50_ms": 40.0,  # of u1's 20 ms and u3's 40 ms
        "answered_per_s": 4 / 0.2,  # 4 HTTP answers from the first write (0) to the last answer (200 ms)
        "written_per_s": 4 / 0.11,
        "flags": [],
    }


def test_a_fair_run_gives_every_coupon_to_the_earliest():
    sent = sends(0, 1, 2, 3)
    answers = [Answer("201", 1, "u0", 5 * MS), Answer("201", 2, "u1", 6 * MS),
               Answer("409 SOLD_OUT", None, None, 7 * MS), Answer("409 SOLD_OUT", None, None, 8 * MS)]
    figures = fairness(sent, answers, stock=2)
    assert (figures["early_won"], figures["early_share"], figures["last_winner_rank"]) == (2, 1.0, 2)
    assert figures["early_written_won"] == 2
    assert (figures["refused_early"], figures["max_lead_ms"], figures["flags"]) == (0, None, [])


def test_broken_invariants_are_flagged():
    sent = sends(0, 1, 2, None)  # the last never written
    answers = [Answer("201", 7, "u0", 5 * MS), Answer("201", 7, "u9", 6 * MS), None, None]
    flags = fairness(sent, answers, stock=1)["flags"]
    assert flags == ["2 coupons issued to 3 users for a stock of 1", "a ticket names another user than its sender",
                     "a serial was issued twice", "1 requests unanswered"]
    assert fairness([Send("u0", 0), Send("u0", MS)], [None, None], stock=1)["flags"][0] == "users not distinct"


def test_an_answer_is_taken_once_whole():
    head = b"HTTP/1.1 409 CONFLICT\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n"
    assert take_answer(head + b'{"error":') is None
    assert take_answer(head + b'{"error":}') == (409, b'{"error":}')
    assert take_answer(b"HTTP/1.1 201 CREATED\r\nContent-Len") is None


def test_the_earliest_by_write_are_counted_apart_from_the_earliest_by_rank():
    # fresh connections are ranked by when their connects started: u0's connect took longer, and
    # its request was written after u1's
    sent = [Send("u0", 9 * MS), Send("u1", 1 * MS), Send("u2", 2 * MS)]
    answers = [Answer("409 SOLD_OUT", None, None, 20 * MS), Answer("201", 1, "u1", 10 * MS),
               Answer("201", 2, "u2", 11 * MS)]
    figures = fairness(sent, answers, stock=2)
    assert (figures["early_won"], figures["early_written_won"]) == (1, 2)
