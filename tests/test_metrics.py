"""/metrics: Prometheus text, outcome counters that move, summed over real gunicorn workers."""
import http.client

from prometheus_client.parser import text_string_to_metric_families

from loadtest.harness import open_campaign, users
from tests.support import flood, get, issue_call


def samples(text):
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def outcome(values, code):
    return values.get(("coupon_issue_total", (("outcome", code),)), 0)


def test_metrics_count_outcomes_in_prometheus_text(client, svc, signer):
    campaign_id = open_campaign(svc, 2, "metrics")
    # the app's own counters, from zero; /metrics is scraped once, below, as it caches the
    # outbox figures for a moment
    for user in ("m1", "m1", "m2", "m3"):
        client.post(f"/api/v1/campaigns/{campaign_id}/issue",
                    headers={"Authorization": "Bearer " + signer.mint(user)})
    svc.metrics.record_flushed(3)

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=")
    after = samples(response.get_data(as_text=True))
    assert (outcome(after, "NEW"), outcome(after, "HELD"), outcome(after, "SOLD_OUT")) == (2, 1, 1)
    assert after[("coupon_issue_duration_seconds_count", ())] == 4
    assert after[("coupon_flushed_total", ())] == 3
    label = (("campaign_id", str(campaign_id)),)
    assert after[("coupon_outbox_backlog", label)] == 2  # no flusher runs in this test
    assert after[("coupon_flush_lag_seconds", label)] >= 0


def test_metrics_sum_over_gunicorn_workers(svc, signer, gunicorn, tmp_path):
    server = gunicorn(workers=2, PROMETHEUS_MULTIPROC_DIR=tmp_path)
    campaign_id = open_campaign(svc, 100, "metrics")
    results = flood([issue_call(server.url, campaign_id, u, t) for u, t in users(signer, 150, prefix="w")],
                    concurrency=50)
    assert sorted(status for _, status, _ in results) == [201] * 100 + [409] * 50

    status, _ = get(server.url, "/healthz")
    assert status == 200
    # any worker answers the scrape with the sum over both
    for _ in range(4):
        values = samples(raw_get(server.url, "/metrics"))
        assert outcome(values, "NEW") == 100
        assert outcome(values, "SOLD_OUT") == 50
        assert values[("coupon_issue_duration_seconds_count", ())] == 150
        assert values[("coupon_local_block_serials", (("campaign_id", str(campaign_id)),))] == 0


def raw_get(base_url, path):
    host, port = base_url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()
