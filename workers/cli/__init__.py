"""python -m workers: run the pool, enqueue a job, show stats, manage failed jobs.

Settings come from the environment, the Laravel .env, config/gateway.local.toml and
config/gateway.toml (see check-config); the flags override them. A bad setting or flag
prints one line and exits 2.
"""

from workers.cli.commands import main

__all__ = ["main"]
