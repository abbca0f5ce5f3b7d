"""What the gateway and the workers both use, and nothing of either program's own code.

The settings loader, the log format, task shutdown, Redis connections (plain or behind
Sentinel), the webhook outbox and its signature, and Laravel's own rules (``.env``, key
prefix, ``Str::slug``, the queue layout in Redis and the failed-job store). The workers
import from the gateway only this package; ``lint-imports`` holds both to it.
"""
