"""The OpenAPI 3 document of the public HTTP API, served at /openapi.json.

Kept by hand and small; tests/integration/test_fuzz.py checks that every route of the app is in it and
drives generated requests from it.
"""
from coupon.db import MAX_ID
from coupon.errors import HTTP_ERRORS, RateLimited


def _codes(status):
    """The error codes of one status, as the description of that answer."""
    codes = [e.code + (" (see the Retry-After header)" if e is RateLimited else "")
             for e in HTTP_ERRORS if e.status == status]
    return " or ".join(codes)


def _json(schema):
    return {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/" + schema}}}}


def _errors(*statuses):
    return {str(s): {"description": _codes(s), **_json("Error")} for s in statuses}


CAMPAIGN_ID = {
    "name": "campaign_id", "in": "path", "required": True,
    "description": "Anything but a whole number from 1 to 2147483647 answers 404 CAMPAIGN_NOT_FOUND.",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
}
BEARER = [{"bearer": []}]
OPS = [{"ops": []}]

SPEC = {
    "openapi": "3.0.3",
    "info": {
        "title": "coupon",
        "version": "1",
        "description": "First-come-first-served coupon issuing. Campaigns are managed with the "
                       "`flask campaign` CLI only; there is no admin operation over HTTP.",
    },
    "paths": {
        "/api/v1/campaigns/{campaign_id}/issue": {
            "post": {
                "summary": "Get the caller's coupon of a campaign (idempotent per user)",
                "parameters": [CAMPAIGN_ID],
                "security": BEARER,
                "requestBody": {
                    "required": False,
                    "description": "Empty, or a JSON object whose fields are ignored "
                                   "(the user comes from the token only).",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "201": {"description": "a new ticket", **_json("Ticket")},
                    "200": {"description": "the ticket the caller already holds", **_json("Ticket")},
                    **_errors(400, 401, 404, 408, 409, 413, 429, 503),
                },
            },
        },
        "/api/v1/campaigns/{campaign_id}": {
            "get": {
                "summary": "Public status of a campaign",
                "parameters": [CAMPAIGN_ID],
                "responses": {"200": {"description": "status", **_json("CampaignStatus")},
                              **_errors(404, 503)},
            },
        },
        "/api/v1/campaigns/{campaign_id}/ticket": {
            "get": {
                "summary": "The caller's ticket of a campaign",
                "parameters": [CAMPAIGN_ID],
                "security": BEARER,
                "responses": {"200": {"description": "the ticket", **_json("Ticket")},
                              **_errors(401, 404, 429, 503)},
            },
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: Redis and the database reachable; in production, Redis set "
                           "to keep every claim",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            },
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Prometheus text format",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}},
            },
        },
        "/ops/": {
            "get": {
                "summary": "The operators' live page (HTML; development: open, production: HTTP "
                           "Basic with OPS_PASSWORD, and no page at all without one)",
                "security": OPS,
                "responses": {"200": {"description": "the page",
                                      "content": {"text/html": {"schema": {"type": "string"}}}},
                              **_errors(401, 404)},
            },
        },
        "/ops/live.json": {
            "get": {
                "summary": "What the operators' page shows now: health, campaigns, the selected "
                           "campaign's figures, this host's counters",
                "security": OPS,
                "parameters": [{"name": "campaign", "in": "query", "required": False,
                                "description": "the campaign to show (default: the newest live one)",
                                "schema": {"type": "integer", "minimum": 1}},
                               {"name": "since", "in": "query", "required": False,
                                "description": "the previous poll's `now`: the outbox's highest "
                                               "backlog and lag since then are reported",
                                "schema": {"type": "number"}}],
                "responses": {"200": {"description": "live figures", **_json("Object")},
                              **_errors(401, 404, 503)},
            },
        },
        "/ops/campaigns/{campaign_id}/history.json": {
            "get": {
                "summary": "A live sale's coupons issued per second from its opening, as Redis "
                           "counted them, up to the last whole second",
                "security": OPS,
                "parameters": [CAMPAIGN_ID],
                "responses": {"200": {"description": "the history", **_json("Object")},
                              **_errors(401, 404, 503)},
            },
        },
        "/ops/campaigns/{campaign_id}/replay.json": {
            "get": {
                "summary": "A sale replayed: issues per second, time to sell out, reconciliation",
                "security": OPS,
                "parameters": [CAMPAIGN_ID],
                "responses": {"200": {"description": "the replay", **_json("Object")},
                              **_errors(401, 404, 503)},
            },
        },
        "/favicon.ico": {
            "get": {"summary": "The operators' page's icon",
                    "responses": {"200": {"description": "an SVG",
                                          "content": {"image/svg+xml": {"schema": {"type": "string"}}}}}},
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3"}}},
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                       "description": "A JWT of the platform's login (keys from AUTH_JWKS_URL) or an "
                                      "HS256 token minted by `flask token USER_ID`."},
            "ops": {"type": "http", "scheme": "basic",
                    "description": "Any user name, the password OPS_PASSWORD (production only)."},
        },
        "schemas": {
            "Object": {"type": "object"},
            "Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                }},
            },
            "Ticket": {
                "type": "object",
                "required": ["campaign_id", "user_id", "serial", "code", "issued_at"],
                "properties": {
                    "campaign_id": {"type": "integer"}, "user_id": {"type": "string"},
                    "serial": {"type": "integer"}, "code": {"type": "string"},
                    "issued_at": {"type": "string", "format": "date-time"},
                },
            },
            "CampaignStatus": {
                "type": "object",
                "required": ["id", "name", "total", "issued", "remaining", "status"],
                "properties": {
                    "id": {"type": "integer"}, "name": {"type": "string"},
                    "total": {"type": "integer"}, "issued": {"type": "integer"},
                    "remaining": {"type": "integer"},
                    "status": {"type": "string",
                               "enum": ["pending", "scheduled", "open", "sold_out", "closed"]},
                    "opens_at": {"type": "string", "format": "date-time", "nullable": True},
                    "closes_at": {"type": "string", "format": "date-time", "nullable": True},
                },
            },
        },
    },
}
