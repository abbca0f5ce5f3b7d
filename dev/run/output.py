"""Every child's output, each line prefixed with its name."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterable


class Output:
    """Prefixed lines on stdout, names aligned, so several logs read as one."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.width = max((len(n) for n in ("devrun", *names)), default=6) + 2

    def say(self, name: str, text: str) -> None:
        prefix = f"[{name}]".ljust(self.width)
        try:
            for line in text.splitlines() or [""]:
                sys.stdout.write(f"{prefix} {line}\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            pass  # nobody is reading any more; keep stopping the children regardless

    def banner(self, text: str) -> None:
        """The first line prefixed like any other, the rest bare so the curls copy cleanly."""
        first, _, rest = text.partition("\n")
        self.say("devrun", first)
        with contextlib.suppress(BrokenPipeError, ValueError):
            sys.stdout.write(rest if rest.endswith("\n") else f"{rest}\n")
            sys.stdout.flush()

    async def pump(self, name: str, stream: asyncio.StreamReader) -> None:
        """Copy a child's output line by line until it closes it."""
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # longer than LINE_LIMIT; readline drops it
                self.say(name, "(an over-long line was left out)")
                continue
            if not line:
                return
            self.say(name, line.decode(errors="replace").rstrip("\r\n"))
