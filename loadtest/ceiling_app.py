"""The ceilings of the benchmark, served by the same gunicorn config as the product
(`gunicorn -k gevent loadtest.ceiling_app:app`), so a ratio product/ceiling
measures our own cost only:

app:  a bare Flask endpoint returning small JSON, nothing else (the issue's ceiling, (a));
bare: the same answer from a plain WSGI function, gunicorn and gevent alone ((e)). The product
      serves its issue call without Flask too (coupon.api.IssueEndpoint), so this is the fair
      ceiling for it.
"""
from flask import Flask, jsonify

app = Flask(__name__)


@app.route("/api/v1/campaigns/<raw_id>/issue", methods=["POST"])
def issue(raw_id):
    return jsonify(ok=True, campaign_id=raw_id), 201


@app.get("/healthz")
def healthz():
    return jsonify(status="ok")


def bare(environ, start_response):
    body = b'{"ok": true}\n'
    status = "201 CREATED" if environ["REQUEST_METHOD"] == "POST" else "200 OK"  # GET: /healthz
    start_response(status, [("Content-Type", "application/json"),
                                   ("Content-Length", str(len(body)))])
    return [body]
