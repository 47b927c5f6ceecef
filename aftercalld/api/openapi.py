"""The OpenAPI 3.1 document of the HTTP API, served at /v1/openapi.json.

Written by hand: the API is small, and a document generated from the handlers would
describe what the code does rather than what clients may rely on. tests/api checks that
every route is in it and that every response the tests see matches it.
"""
from __future__ import annotations

from typing import Any

from .. import __version__

_TIME = {"type": ["string", "null"], "format": "date-time"}
_TEXT_OR_NULL = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "401": _json(_ref("Error"), "No bearer token, or an unknown one (see WWW-Authenticate)"),
    "500": _json(_ref("Error"), "A bug: the daemon's log has the details"),
}

_MESSAGE = {
    "type": "object",
    "required": ["id", "key", "call_key", "rule", "recipient", "to", "destination", "sender", "text", "encoding",
                 "segments", "state", "reason", "attempts", "created", "next_attempt", "submitted", "final",
                 "parts"],
    "properties": {
        "id": {"type": "integer"},
        "key": {"type": "string", "description": "the idempotency key: api/<token name>/<Idempotency-Key>, "
                                                  "after <pbx>/<call id>/ when attached to a call"},
        "call_key": {**_TEXT_OR_NULL, "description": "<pbx>/<call id> of the call it belongs to"},
        "rule": {"type": "string", "description": 'the rule that made it; "api/<token name>" for the API\'s'},
        "recipient": {"type": "string", "enum": ["caller", "agent", "fixed"]},
        "to": {**_TEXT_OR_NULL, "description": "the number as given, E.164 when it could be read"},
        "destination": {**_TEXT_OR_NULL, "description": "E.164; null when the number itself was refused"},
        "sender": {"type": "string"},
        "transport": {**_TEXT_OR_NULL, "description": "the transport that sent it, or last tried; null before"},
        "text": {"type": "string"},
        "encoding": {"type": "string", "enum": ["gsm7", "ucs2"]},
        "segments": {"type": "integer", "minimum": 1},
        "state": {"type": "string", "enum": ["queued", "sending", "submitted", "retrying", "delivered", "failed",
                                             "undeliverable", "expired", "rejected", "suppressed"]},
        "reason": {"type": "string", "description": "why it was suppressed, failed or is retrying"},
        "attempts": {"type": "integer", "minimum": 0},
        "created": _TIME,
        "next_attempt": _TIME,
        "submitted": _TIME,
        "final": _TIME,
        "parts": {"type": "array", "items": _ref("Part")},
    },
}

_PART = {
    "type": "object",
    "required": ["part", "transport_id", "receipt", "error", "updated"],
    "properties": {
        "part": {"type": "integer", "minimum": 1},
        "transport_id": {"type": "string", "description": "the SMSC's or modem's message id"},
        "receipt": {**_TEXT_OR_NULL, "description": "the delivery receipt's state; null: no receipt yet"},
        "error": {"type": "string"},
        "updated": _TIME,
    },
}

_MESSAGE_REQUEST = {
    "type": "object",
    "required": ["to", "text"],
    "additionalProperties": False,
    "properties": {
        "to": {"type": "string", "maxLength": 64,
               "description": "a phone number, checked by [general]'s rules as a caller's would be"},
        "text": {"type": "string", "description": "at most [api] max_segments parts"},
        "sender": {"type": "string", "description": "a number or an alphanumeric id; default [api] sender"},
        "call_id": {"type": "string", "description": "<pbx>/<call id> (or the bare call id): the text then "
                                                     "shows in that call's view"},
    },
}

_CALL = {
    "type": "object",
    "required": ["call_key", "pbx", "call_id", "time_zone", "status", "direction", "caller", "dialled",
                 "backfilled", "start", "end", "handled", "rule", "decision", "rules_now", "messages"],
    "properties": {
        "call_key": {"type": "string"},
        "pbx": {"type": "string"},
        "call_id": {"type": "string"},
        "time_zone": {"type": "string"},
        "status": _TEXT_OR_NULL,
        "direction": _TEXT_OR_NULL,
        "caller": _TEXT_OR_NULL,
        "dialled": _TEXT_OR_NULL,
        "backfilled": {"type": "boolean", "description": "recovered from the PBX's CDRs"},
        "start": _TIME,
        "end": _TIME,
        "handled": _TIME,
        "rule": {**_TEXT_OR_NULL, "description": "the rule that fired; null: none did"},
        "decision": {"type": "string"},
        "rules_now": {
            "description": "when no rule fired: each rule's failed condition, asked again of today's rules",
            "oneOf": [{"type": "null"}, {
                "type": "object",
                "required": ["config", "edited_after_call", "skipped", "would_match"],
                "properties": {
                    "config": {"type": "string"},
                    "edited_after_call": _TIME,
                    "skipped": {"type": "array", "items": {
                        "type": "object", "required": ["rule", "reason"],
                        "properties": {"rule": {"type": "string"}, "reason": {"type": "string"}}}},
                    "would_match": _TEXT_OR_NULL,
                },
            }],
        },
        "messages": {"type": "array", "items": _ref("Message")},
    },
}

_TEST_RESULT = {
    "type": "object",
    "description": "what `aftercalld test-rule` says: the call through today's rules and policy, into a "
                   "throwaway outbox and the log transport; nothing is sent",
    "required": ["call", "rule", "reason", "duplicate", "messages"],
    "properties": {
        "call": {"type": "object"},
        "rule": _TEXT_OR_NULL,
        "reason": {"type": "string"},
        "duplicate": {"type": "boolean"},
        "messages": {"type": "array", "items": {
            "type": "object",
            "required": ["recipient", "number", "sender", "text", "encoding", "segments", "state", "reason"],
            "properties": {
                "recipient": {"type": "string"},
                "number": _TEXT_OR_NULL,
                "sender": {"type": "string"},
                "text": {"type": "string"},
                "encoding": {"type": "string"},
                "segments": {"type": "integer"},
                "state": {"type": "string", "description": "submitted: would be sent"},
                "reason": {"type": "string"},
            },
        }},
    },
}

_STATUS = {
    "type": "object",
    "description": "the daemon's live status, as `aftercalld status --format json` shows under \"daemon\"",
    "required": ["pid", "started", "updated", "sources", "transport", "queue_depth", "submitted_since_start"],
    "properties": {
        "pid": {"type": "integer"},
        "started": {"type": "string", "format": "date-time"},
        "updated": {"type": "string", "format": "date-time"},
        "sources": {"type": "array", "items": {"type": "object"}},
        "transport": {"type": "object"},
        "queue_depth": {"type": "integer"},
        "submitted_since_start": {"type": "integer"},
        "task_restarts": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
}

_CALL_ID = {"name": "call_id", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "<pbx>/<call id> (the slash may be written as is), or the bare call id"}
_CALL_ERRORS = {
    "404": _json(_ref("Error"), "No such call"),
    "409": _json(_ref("Error"), "The bare call id names calls of several PBXs: give <pbx>/<call id>"),
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "aftercalld HTTP API",
        "version": __version__,
        "description": "Queue texts through aftercalld's outbox, policy and transports, and look up messages "
                       "and calls. Every request but this document's needs `Authorization: Bearer <token>`.",
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "paths": {
        "/v1/messages": {
            "post": {
                "summary": "Queue a text",
                "description": "The text takes the path a rule's takes: outbox, opt-out and DND lists, quiet "
                               "hours, quotas, transport. A repeat with the same Idempotency-Key (per token) "
                               "changes nothing and returns the message first queued, with 200.",
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                                "description": "visible ASCII; without it every request is a new text"}],
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _ref("MessageRequest")}}},
                "responses": {
                    "201": _json(_ref("Message"), "Queued (or recorded as suppressed, with the reason)"),
                    "200": _json(_ref("Message"), "Queued before under this Idempotency-Key"),
                    "400": _json(_ref("Error"), "Not a JSON object, or a bad Idempotency-Key"),
                    "409": _CALL_ERRORS["409"],
                    "413": _json(_ref("Error"), "Body over [api] max_body_bytes"),
                    "415": _json(_ref("Error"), "Not application/json"),
                    "422": _json(_ref("Error"), "A field is missing, of the wrong type, unknown, or names no call"),
                    "503": _json(_ref("Error"), "The outbox refuses writes (disk full?): try again later, "
                                                "with the same Idempotency-Key"),
                    **_ERRORS,
                },
            },
        },
        "/v1/messages/{id}": {
            "get": {
                "summary": "A message: state, reason, parts and their receipts",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "responses": {"200": _json(_ref("Message"), "The message"),
                              "404": _json(_ref("Error"), "No such message"), **_ERRORS},
            },
        },
        "/v1/calls/{call_id}": {
            "get": {
                "summary": "A call as `aftercalld why` shows it",
                "parameters": [_CALL_ID],
                "responses": {"200": _json(_ref("Call"), "The call, its decision and its texts"),
                              **_CALL_ERRORS, **_ERRORS},
            },
        },
        "/v1/calls/{call_id}/test": {
            "post": {
                "summary": "What today's rules would do with this call (as `aftercalld test-rule`)",
                "parameters": [_CALL_ID],
                "responses": {"200": _json(_ref("TestResult"), "The rule that would fire and its texts"),
                              "422": _json(_ref("Error"), "The call was stored by a version that cannot be "
                                                          "read again"),
                              **_CALL_ERRORS, **_ERRORS},
            },
        },
        "/v1/status": {
            "get": {
                "summary": "The daemon's live status",
                "responses": {"200": _json(_ref("Status"), "As `aftercalld status` shows it"), **_ERRORS},
            },
        },
        "/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}},
            },
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "a token from [api] tokens_file"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "MessageRequest": _MESSAGE_REQUEST,
            "Message": _MESSAGE,
            "Part": _PART,
            "Call": _CALL,
            "TestResult": _TEST_RESULT,
            "Status": _STATUS,
        },
    },
}
