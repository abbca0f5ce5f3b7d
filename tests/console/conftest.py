"""The console's tests also run a worker pool: the workers' harness fixtures, shared."""

from tests.workers.conftest import harness, mysql_harness, redis

__all__ = ["harness", "mysql_harness", "redis"]
