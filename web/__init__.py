"""The web application (thin for now: health and an ingest overview; the doctors' pages come next)."""

from __future__ import annotations

from flask import Flask, jsonify, render_template_string

from gateway.errors import StorageError
from gateway.quarantine import Quarantine
from gateway.timeseries import open_store
from rpmgw.db import make_engine, session_factory
from rpmgw.settings import Settings, load_settings

_OVERVIEW = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rpm-gateway</title></head>
<body>
<h1>rpm-gateway</h1>
{% if store_error %}<p><strong>InfluxDB is not answering:</strong> {{ store_error }}</p>
{% else %}
<h2>Readings stored</h2>
<ul>{% for kind, count in counts %}<li>{{ kind }}: {{ count }}</li>{% else %}<li>none yet</li>{% endfor %}</ul>
<p>Newest reading measured at: {{ newest or "-" }}</p>
{% endif %}
<h2>Quarantine (rejected payloads)</h2>
<ul>{% for reason, count in rejected %}<li>{{ reason }}: {{ count }}</li>{% else %}<li>empty</li>{% endfor %}</ul>
</body></html>
"""


def create_app(settings: Settings | None = None) -> Flask:
    """The Flask application; settings default to the environment."""
    settings = settings or load_settings()
    app = Flask(__name__)
    sessions = session_factory(make_engine(settings.database_url))

    @app.get("/healthz")
    def healthz() -> tuple[object, int]:
        return jsonify(status="ok"), 200

    @app.get("/")
    def overview() -> str:
        counts: list[tuple[str, int]] = []
        newest = None
        store_error = None
        try:
            store = open_store(settings.influx)
            try:
                summary = store.summary()
            finally:
                store.close()
            counts = sorted(summary.counts.items())
            newest = summary.last_measured_at
        except StorageError as exc:
            store_error = str(exc)
        rejected = sorted(Quarantine(sessions).counts_by_reason().items())
        return render_template_string(
            _OVERVIEW, counts=counts, newest=newest, rejected=rejected, store_error=store_error
        )

    return app
