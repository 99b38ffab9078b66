"""The OpenAPI 3.1 description of /api/v1 (served as /api/v1/openapi.json, and as a page at /api/v1/docs)."""

from __future__ import annotations

from typing import Any, Final

_ERROR: Final = {"$ref": "#/components/schemas/Error"}
_REFUSED: Final = {
    "401": {"description": "not authenticated", "content": {"application/json": {"schema": _ERROR}}},
    "403": {
        "description": "refused: the role, or the patient is not in the caller's care teams",
        "content": {"application/json": {"schema": _ERROR}},
    },
}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_ALERT_ID: Final = {"name": "alert_id", "in": "path", "required": True, "schema": {"type": "integer"}}
_PATIENT_ID: Final = {"name": "patient_id", "in": "path", "required": True, "schema": {"type": "string"}}
_TIME: Final = {"type": "string", "format": "date-time"}
_NULLABLE_TIME: Final = {"type": ["string", "null"], "format": "date-time"}

SPEC: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "rpm-gateway API",
        "version": "1",
        "description": (
            "Alerts and readings of the caller's own patients (the patients of their care teams), for "
            "doctors and nurses. Authenticate with `Authorization: Bearer <token>` (create a token on "
            "the account page) or with the browser's session (then POST requests need the "
            "`X-CSRFToken` header). Every call is recorded in the audit log. Times are RFC 3339, UTC."
        ),
    },
    "servers": [{"url": "/api/v1"}],
    "security": [{"bearer": []}, {"session": []}],
    "paths": {
        "/alerts": {
            "get": {
                "summary": "Alerts of the caller's patients, unacknowledged first, then most severe and oldest; in pages",
                "parameters": [
                    _query(
                        "state",
                        "open (default), unacknowledged, in_care, closed or all",
                        {"type": "string", "enum": ["open", "unacknowledged", "in_care", "closed", "all"]},
                    ),
                    _query("severity", "critical, urgent or routine", {"type": "string"}),
                    _query("rule", "a rule id, e.g. severe_bp", {"type": "string"}),
                    _query("patient", "part of a patient's id or name", {"type": "string"}),
                    _query(
                        "page",
                        "which page (1 unless given; past the last page, the last page)",
                        {"type": "integer", "minimum": 1, "default": 1},
                    ),
                    _query(
                        "per_page",
                        "alerts per page, 1 to 500",
                        {"type": "integer", "minimum": 1, "maximum": 500, "default": 500},
                    ),
                ],
                "responses": {
                    "200": _ok(
                        "a page of the alerts, and how many match in all",
                        {
                            "type": "object",
                            "properties": {
                                "alerts": {"type": "array", "items": {"$ref": "#/components/schemas/Alert"}},
                                "total": {"type": "integer", "description": "alerts matching the filters"},
                                "page": {"type": "integer", "description": "this page (1-based)"},
                                "per_page": {"type": "integer"},
                                "pages": {"type": "integer", "description": "pages the matching alerts fill"},
                                "next_page": {
                                    "type": ["integer", "null"],
                                    "description": "the following page; null on the last",
                                },
                            },
                        },
                    ),
                    **_REFUSED,
                },
            }
        },
        "/alerts/{alert_id}": {
            "get": {
                "summary": "One alert with its events and acknowledgement",
                "parameters": [_ALERT_ID],
                "responses": {
                    "200": _ok("the alert", {"$ref": "#/components/schemas/AlertDetail"}),
                    **_REFUSED,
                },
            }
        },
        "/alerts/{alert_id}/acknowledge": {
            "post": {
                "summary": "Acknowledge an alert: what was done (reason code) and a note; stops escalation",
                "parameters": [_ALERT_ID],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Acknowledge"}}},
                },
                "responses": {
                    "200": _ok("acknowledged", {"$ref": "#/components/schemas/Alert"}),
                    "400": _ok("reason code unknown or note empty", _ERROR),
                    "409": _ok("acknowledged by someone already", _ERROR),
                    **_REFUSED,
                },
            }
        },
        "/patients": {
            "get": {
                "summary": "The caller's patients",
                "responses": {
                    "200": _ok(
                        "the patients",
                        {
                            "type": "object",
                            "properties": {
                                "patients": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Patient"},
                                }
                            },
                        },
                    ),
                    **_REFUSED,
                },
            }
        },
        "/patients/{patient_id}/readings": {
            "get": {
                "summary": "A patient's readings in [start, end), oldest first (default: the last 7 days)",
                "parameters": [
                    _PATIENT_ID,
                    _query("start", "RFC 3339 with offset", _TIME),
                    _query("end", "RFC 3339 with offset (default now; at most 92 days after start)", _TIME),
                    _query("type", "blood_pressure or glucose", {"type": "string"}),
                ],
                "responses": {
                    "200": _ok("the readings", {"$ref": "#/components/schemas/Readings"}),
                    "400": _ok("bad time range or type", _ERROR),
                    "503": _ok("InfluxDB is not answering", _ERROR),
                    **_REFUSED,
                },
            }
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "an API token (rpm_...)"},
            "session": {"type": "apiKey", "in": "cookie", "name": "rpmgw_session"},
        },
        "schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
            "Alert": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "patient_id": {"type": "string"},
                    "patient_name": {"type": "string"},
                    "rule": {"type": "string"},
                    "family": {"type": "string"},
                    "severity": {"type": "string", "enum": ["critical", "urgent", "routine"]},
                    "state": {"type": "string", "description": 'e.g. "active, unacknowledged", or "closed"'},
                    "active": {"type": "boolean"},
                    "acknowledged": {"type": "boolean"},
                    "opened_at": _TIME,
                    "first_measured_at": _NULLABLE_TIME,
                    "last_measured_at": _NULLABLE_TIME,
                    "reading_count": {"type": "integer"},
                    "worst_value": {"type": "string", "description": 'e.g. "184/112 mmHg"'},
                    "last_value": {"type": "string"},
                    "confirmation": {"type": ["string", "null"]},
                    "threshold_version": {"type": "string"},
                    "cleared_at": _NULLABLE_TIME,
                    "acknowledged_at": _NULLABLE_TIME,
                    "acknowledged_by": {"type": ["string", "null"]},
                    "closed_at": _NULLABLE_TIME,
                },
            },
            "AlertDetail": {
                "allOf": [
                    {"$ref": "#/components/schemas/Alert"},
                    {
                        "type": "object",
                        "properties": {
                            "events": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "at": _TIME,
                                        "kind": {"type": "string"},
                                        "detail": {"type": "string"},
                                    },
                                },
                            },
                            "acknowledgement": {
                                "type": ["object", "null"],
                                "properties": {
                                    "at": _TIME,
                                    "by": {"type": "string"},
                                    "reason_code": {"type": "string"},
                                    "note": {"type": "string"},
                                    "time_to_ack_seconds": {"type": "integer"},
                                },
                            },
                        },
                    },
                ]
            },
            "Acknowledge": {
                "type": "object",
                "required": ["reason_code", "note"],
                "properties": {
                    "reason_code": {
                        "type": "string",
                        "enum": [
                            "contacted_patient",
                            "medication_changed",
                            "measurement_error",
                            "emergency_services",
                            "no_action_needed",
                        ],
                    },
                    "note": {"type": "string", "minLength": 1},
                },
            },
            "Patient": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "name": {"type": "string"},
                    "language": {"type": "string"},
                    "timezone": {"type": "string"},
                },
            },
            "Readings": {
                "type": "object",
                "properties": {
                    "patient_id": {"type": "string"},
                    "start": _TIME,
                    "end": _TIME,
                    "readings": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "msg_id": {"type": "string"},
                                "device_id": {"type": "string"},
                                "type": {"type": "string", "enum": ["blood_pressure", "glucose"]},
                                "measured_at": _TIME,
                                "quality": {"type": "array", "items": {"type": "string"}},
                                "systolic": {"type": "integer"},
                                "diastolic": {"type": "integer"},
                                "pulse": {"type": ["integer", "null"]},
                                "value": {"type": ["number", "null"]},
                                "unit": {"type": "string"},
                                "value_mmol": {"type": ["number", "null"]},
                                "censored": {"type": ["string", "null"], "enum": ["LO", "HI", None]},
                                "meal": {"type": ["string", "null"]},
                            },
                        },
                    },
                },
            },
        },
    },
}
