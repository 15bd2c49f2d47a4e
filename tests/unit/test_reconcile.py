"""The reconciliation report: when Redis and the database agree, and how a difference reads."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coupon.reconcile import Report

KINDS = {  # field: its title in the report
    "missing_in_mysql": "missing in the database",
    "extra_in_mysql": "in the database, not in redis",
    "different": "different ticket",
    "duplicate_serials": "serial held twice",
    "beyond_total": "serial above the campaign's total",
}


def test_equal_counts_and_no_difference_agree():
    assert Report(7).agree
    report = Report(7, redis_claims=5, redis_counter=5, mysql_rows=5)
    assert report.agree
    assert report.lines() == [
        "campaign 7: redis claims 5, redis counter 5, database rows 5: AGREE"]


@pytest.mark.parametrize("counts", [(5, 5, 4), (5, 4, 5), (4, 5, 5), (0, 0, 1)])
def test_any_count_apart_differs(counts):
    report = Report(7, *counts)
    assert not report.agree
    assert report.lines()[0].endswith(": DIFFER")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_any_difference_differs_and_is_listed_under_its_title(kind):
    report = Report(7, 3, 3, 3, **{kind: ["u1"]})
    assert not report.agree
    assert report.lines() == [
        "campaign 7: redis claims 3, redis counter 3, database rows 3: DIFFER",
        f"  {KINDS[kind]}: 1",
        "    u1",
    ]


@given(sizes=st.fixed_dictionaries({kind: st.integers(0, 30) for kind in KINDS}),
       limit=st.integers(1, 25))
def test_each_kind_shows_its_count_and_its_first_limit_items(sizes, limit):
    differences = {kind: [f"{kind}{i}" for i in range(n)] for kind, n in sizes.items()}
    lines = Report(1, **differences).lines(limit=limit)
    expected = [lines[0]]
    for kind, title in KINDS.items():  # in this order
        if differences[kind]:
            expected.append(f"  {title}: {len(differences[kind])}")
            expected.extend(f"    {item}" for item in differences[kind][:limit])
    assert lines == expected
    assert lines[0].endswith("AGREE" if not any(sizes.values()) else "DIFFER")
