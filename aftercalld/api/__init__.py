"""The HTTP API (issue 18): other systems queue texts and look up messages and calls.

config.py reads ``[api]`` and the tokens file; server.py runs the listener inside the
daemon; openapi.py is the document served at /v1/openapi.json.
"""
