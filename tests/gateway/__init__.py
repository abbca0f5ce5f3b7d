"""The gateway in this process, against real Redis, MariaDB and simulated instances."""
