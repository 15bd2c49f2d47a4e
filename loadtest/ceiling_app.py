"""The ceiling of the benchmark: a bare Flask endpoint returning small JSON, nothing else.

Served by the same gunicorn config as the product (`gunicorn -c config/gunicorn.conf.py
loadtest.ceiling_app:app`), so the ratio product/ceiling measures our own cost only.
"""
from flask import Flask, jsonify

app = Flask(__name__)


@app.route("/api/v1/campaigns/<raw_id>/issue", methods=["POST"])
def issue(raw_id):
    return jsonify(ok=True, campaign_id=raw_id), 201


@app.get("/healthz")
def healthz():
    return jsonify(status="ok")
