"""Pure tests: no Redis, no MariaDB, no server of any kind; they run in a second."""
