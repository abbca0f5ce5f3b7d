"""What a reload may change, and new settings checked before anything is built from them.

Apart from the gateway's own modules, so that the parent of several gateway processes (which
only checks a new configuration before passing SIGHUP on) needs none of the serving code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.shared.settings import Settings, SettingsError

log = logging.getLogger("gateway.lifecycle.reload")

RESTART_ONLY = Settings.restart_only()  # marked next to their fields


def refusal(current: Settings, new: Settings) -> str | None:
    """Why ``new`` cannot replace ``current`` without a restart, if it cannot."""
    changed = [name for name in RESTART_ONLY if getattr(current, name) != getattr(new, name)]
    if changed:
        return f"{', '.join(changed)} cannot change without a restart"
    return None


def checked(current: Settings, load: Callable[[], Settings]) -> Settings | None:
    """The new settings, or None after one log line saying why they are refused."""
    try:
        new = load()
    except SettingsError as exc:
        why = str(exc)
    else:
        refused = refusal(current, new)
        if refused is None:
            return new
        why = refused
    log.error("reload refused, the running configuration stays: %s", why)
    return None
