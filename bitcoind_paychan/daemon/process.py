"""Acts on the whole process, the daemon's to take at start (a library leaves them to the
application that embeds it): the open files limit raised, so each connected channel can have
its socket; and the long-lived heap (the autopilot's index) frozen out of the garbage
collector's full passes, which would otherwise walk it while holding the event loop."""

from __future__ import annotations

import gc
import logging
import resource

log = logging.getLogger("bitcoind_paychan.daemon.daemon")  # the "daemon" subsystem's lines


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (as bitcoind does), so
    each connected channel can have its socket; log it. Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.info("open files limit raised from %s to %s", soft, hard)
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit %s (%s): at most about that "
                        "many channels can be connected at once", soft, exc)
    else:
        log.info("open files limit: %s", "unlimited" if soft == resource.RLIM_INFINITY else soft)
    return int(soft)


def freeze_heap() -> None:
    """Once the services have started (each watcher built its index, which lives as long as
    the process): keep what is alive now out of the collector's full passes, which would
    otherwise walk the index's large dicts and heap while holding the event loop (tens of ms
    with 100,000 channels)."""
    gc.collect()
    gc.freeze()


def thaw_heap() -> None:
    """After the services stopped: what `freeze_heap` froze may be collected again."""
    gc.unfreeze()
