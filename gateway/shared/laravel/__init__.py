"""Laravel's rules, as a Laravel app applies them: its key prefix, ``Str::slug``, the job
payloads and queue lists it writes to Redis, and its ``failed_jobs`` table."""
