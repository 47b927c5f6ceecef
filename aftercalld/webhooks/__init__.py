"""Signed webhooks for message outcomes, replies and opt-outs, posted from a durable outbox.

`config` reads the [[webhook]] tables, `events` turns what happened into rows of the
webhook_deliveries table (in the transaction of the change itself), `signing` is the HMAC
header a receiver checks, and `worker` posts the rows with retries and backoff.
"""
