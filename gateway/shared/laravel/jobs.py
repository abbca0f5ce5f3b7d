"""A job as Laravel writes it: a JSON object in a Redis list.

The pool never rewrites a payload it does not have to. The exact string the pop left in
``:reserved`` (``Job.raw``) is what gets deleted or moved, because Redis' cjson re-encodes
the whole payload on pop and only that string identifies the entry. When the pool itself must
encode (enqueue, undoing an attempt, retrying a failed job) it does so like Laravel's
``createPayload`` (``json_encode`` with ``JSON_UNESCAPED_UNICODE``): compact, ``\\/`` for
``/``, keys in their original order, unknown keys kept.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any


class PayloadError(ValueError):
    """A payload the pool cannot run: not JSON, or not a JSON object."""


@dataclass(frozen=True, slots=True)
class Job:
    """One reserved job: where it came from, its reserved string and its decoded payload.

    ``popped`` is the payload as it was popped, before the pop added the attempt: what
    Laravel's ``RedisJob::getRawBody()`` returns, so what PHP runs and ``failed_jobs`` keeps.
    """

    queue: str
    raw: bytes
    payload: dict[str, Any] | None
    error: str | None = None  # why ``payload`` is None
    popped: bytes | None = None  # None: the same as ``raw``

    @classmethod
    def reserved(cls, queue: str, raw: bytes, counted: bool, popped: bytes | None = None) -> Job:
        """Wrap a popped entry; ``counted`` is false when cjson could not take its attempt."""
        try:
            payload = decode(raw if counted else popped or raw)  # raw may carry a suffix
        except PayloadError as exc:
            return cls(queue, raw, None, str(exc), popped)
        if not counted:
            return cls(queue, raw, None, "payload was rejected by Redis cjson", popped)
        return cls(queue, raw, payload, None, popped)

    @property
    def body(self) -> bytes:
        """The payload as popped (Laravel's raw body)."""
        return self.raw if self.popped is None else self.popped

    @property
    def name(self) -> str:
        return str((self.payload or {}).get("job") or "")

    @property
    def attempts(self) -> int:
        """Attempts so far, this one included (the pop already added it)."""
        return _int((self.payload or {}).get("attempts"), 0)

    @property
    def data(self) -> dict[str, Any]:
        data = (self.payload or {}).get("data")
        return data if isinstance(data, dict) else {}

    @property
    def uuid(self) -> str:
        payload = self.payload or {}
        return str(payload.get("uuid") or payload.get("id") or "")

    @property
    def key(self) -> str:
        """What names this job the same on every attempt, for its sends' idempotency keys:
        its uuid, else a digest of the payload without what changes between attempts."""
        if self.uuid:
            return self.uuid
        stable = {k: v for k, v in (self.payload or {}).items() if k not in VOLATILE}
        canonical = json.dumps(stable, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "sha256-" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()

    def send_key(self, sequence: int) -> str:
        """The ``Idempotency-Key`` of the job's ``sequence``-th request (from 1) in an
        attempt: the same on every attempt, so the gateway sends each one at most once."""
        return f"{self.key}:{sequence}"


# Payload keys that an attempt, a release, pacing or a repeat in :reserved changes: not part
# of a job's identity.
VOLATILE = frozenset({"attempts", "paceSlot", "reservedCopy"})


def decode(raw: bytes | str) -> dict[str, Any]:
    """Parse a payload; anything but a JSON object is a :class:`PayloadError`."""
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"payload is not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise PayloadError("payload is not a JSON object")
    return payload


def encode(payload: dict[str, Any]) -> bytes:
    """Encode like Laravel's ``json_encode($payload, JSON_UNESCAPED_UNICODE)``."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return text.replace("/", "\\/").encode()


def with_attempts(raw: bytes, attempts: int) -> bytes:
    """The payload re-encoded with another ``attempts``; everything else kept."""
    payload = decode(raw)
    payload["attempts"] = attempts
    return encode(payload)


def without_pace(raw: bytes) -> bytes:
    """The payload without its ``paceSlot``, so a failed job retried asks for pacing again;
    byte for byte the same when it has none (or is not a JSON object)."""
    try:
        payload = decode(raw)
    except PayloadError:
        return raw
    if "paceSlot" not in payload:
        return raw
    del payload["paceSlot"]
    return encode(payload)


def new_payload(name: str, data: dict[str, Any], **options: Any) -> dict[str, Any]:
    """A payload with the keys Laravel writes, plus ``pushedAt`` so waiting age is known.

    ``options`` may set ``maxTries``, ``timeout``, ``backoff``, ``retryUntil`` and so on.
    """
    job_id = str(uuid.uuid4())
    payload: dict[str, Any] = {
        "uuid": job_id,
        "displayName": name,
        "job": name,
        "maxTries": None,
        "maxExceptions": None,
        "failOnTimeout": False,
        "backoff": None,
        "timeout": None,
        "retryUntil": None,
        "data": data,
        "id": job_id,
        "attempts": 0,
        "pushedAt": round(time.time(), 3),
    }
    payload.update(options)
    return payload


def pushed_at(payload: dict[str, Any]) -> float | None:
    """When the job was first pushed: ``pushedAt`` (ours), else Laravel 11's ``createdAt``."""
    for key in ("pushedAt", "createdAt"):
        value = payload.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
