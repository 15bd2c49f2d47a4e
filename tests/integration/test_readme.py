"""The README's walk-through shows what the service prints: every answer one line of compact JSON
(tickets, public status, errors alike), ticket codes of 20 hexadecimal characters."""
import json
import os
import re

from loadtest.harness import ROOT, open_campaign
from tests.support import issue

CODE = re.compile(r"[0-9A-F]{20}")


def one_compact_line(body):
    """body is one line of JSON as the service prints it; return it parsed."""
    assert body.endswith(b"\n") and body.count(b"\n") == 1, body
    parsed = json.loads(body)
    assert body == json.dumps(parsed, separators=(",", ":")).encode() + b"\n", body
    return parsed


def test_answers_are_one_compact_json_line_each(client, svc, signer):
    campaign_id = open_campaign(svc, 1, "readme")
    alice = signer.mint("alice")
    new, again = issue(client, campaign_id, alice), issue(client, campaign_id, alice)
    sold_out = issue(client, campaign_id, signer.mint("bob"))
    status = client.get(f"/api/v1/campaigns/{campaign_id}")
    ticket = client.get(f"/api/v1/campaigns/{campaign_id}/ticket", headers={"Authorization": f"Bearer {alice}"})
    assert [r.status_code for r in (new, again, sold_out, status, ticket)] == [201, 200, 409, 200, 200]
    for response in (new, again, sold_out, status, ticket):
        one_compact_line(response.data)
    assert CODE.fullmatch(new.json["code"])
    # the issue call without a body is answered before Flask (api.IssueEndpoint): the same bytes
    assert new.data == ticket.data


def test_walk_through_sample_output_is_what_the_service_prints():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    sample = readme.split("What it printed here", 1)[1].split("```", 2)[1]
    lines = [line for line in sample.splitlines() if line.startswith('{"')]
    assert len(lines) == 7  # two issues, status, ticket, two more issues, SOLD_OUT
    for line in lines:
        parsed = one_compact_line(line.encode() + b"\n")
        if "code" in parsed and "serial" in parsed:
            assert CODE.fullmatch(parsed["code"]), line
    assert "database rows 3: AGREE" in sample and "mysql" not in sample
