"""Whole programs as processes: supervisor, systemd units, make run, several hosts, Sentinel."""
