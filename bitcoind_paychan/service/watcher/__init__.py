"""The autopilot: keeps one side's stored channels safe while nobody watches.

It follows the node's blocks (BlockMonitor: ZMQ wake-ups, polling, reorgs), scans each block
once against its index of watched outpoints (`WatchIndex`, rebuilt from the store at start),
folds it into the channels it touches, and carries out what `channel.watch.review` decides for
the channels that need attention. With ZMQ, each transaction entering the node's mempool
(`rawtx`) is matched against the index too, and the channels it spends from are reviewed at
once (the review asks the node: ZMQ only wakes it). APScheduler wakes it once, at the
earliest deadline (a restart loses none, and one missed while the process was down fires at
once), on a safety interval, and for retries with backoff while the node refuses a refund
as non-final or cannot be reached. Store and node calls run off the event loop, a block's
channels are loaded and stored in slices of SLICE, and no loop step walks all channels, so a
payment is never held up by more than a few milliseconds of the watcher's work. With `leases` (a
server), a deadline's settlement and each broadcast are claimed first, so one instance of those
sharing the store does each; and when the store is shared, the index re-reads the live channels
at each block and review, so it learns of channels other instances opened.

One idea a module: chainwatcher.py (ChainWatcher: built, attached, started, stopped),
blocks.py (block folding), review.py (the review pipeline), channels.py (the index kept from
the store, the store read and written in slices), schedule.py (the wake-ups), duties.py (what
instances sharing a store claim), view.py (ChannelView).
"""

from bitcoind_paychan.service.watcher.chainwatcher import ChainWatcher
from bitcoind_paychan.service.watcher.channels import LIVE, SLICE
from bitcoind_paychan.service.watcher.review import FINAL, MAX_BACKOFF, WatchEvent
from bitcoind_paychan.service.watcher.view import ChannelView

__all__ = ["FINAL", "LIVE", "MAX_BACKOFF", "SLICE", "ChainWatcher", "ChannelView", "WatchEvent"]
