"""coupon.fairness.SaleOrder: a sale's refusals against the arrival of its last coupon's request."""
from coupon.fairness import SaleOrder


def test_refusals_that_arrived_before_the_last_coupons_request_are_counted_with_their_lead():
    order = SaleOrder.of(1_000.5, {900: 2, 949: 1, 950: 1, 999: 3, 1_000: 4, 1_200: 10})
    assert order.refused == 21
    assert order.refused_ahead == 7  # 900, 949, 950, 999: the same ms as the last one is not ahead
    assert order.refused_plainly == 3  # 900 and 949 ended 50 ms or more before 1000.5; 950 not
    assert order.max_lead_ms == 100.5
    assert order.lines() == ["order: 7 of 21 refused SOLD_OUT arrived before the last coupon's "
                             "request (3 of them 50 ms or more before it; the earliest 100.5 ms before)"]


def test_a_fair_sale_and_one_without_coupons():
    assert SaleOrder.of(1_000.0, {1_001: 5}).refused_ahead == 0
    assert SaleOrder.of(None, {5: 1}).lines() == ["order: no coupon issued; 1 refused SOLD_OUT"]
