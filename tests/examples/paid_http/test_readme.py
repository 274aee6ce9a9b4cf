"""The example's README runs as written: a regtest node, the paid API, paid requests from two
client processes (the second resumes the channel), the settlement on chain."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.store import SQLiteStore
from regtest.fetch import cache_root
from tests.examples.paid_http import EXAMPLE
from tests.test_readme import run_block


def block() -> str:
    readme = (EXAMPLE / "README.md").read_text()
    match = re.search(r"<!-- paid-http -->\s*```sh\n(.*?)```\s*<!-- /paid-http -->", readme,
                      re.DOTALL)
    assert match, "the example's README lost its regtest block"
    return match.group(1)


def test_the_readme_runs_as_written(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "XDG_CACHE_HOME": str(cache_root().parent)}
    out, err = run_block(block(), env, tmp_path)
    offer = json.loads(next(line for line in out.splitlines() if line.startswith('{"price"')))
    assert offer["price"] == 100 and offer["error"] == "payment required", out
    assert out.count("200 {") == 21, out + err
    assert "paid 2000 sat" in err and "paid 100 sat" in err, err
    settlement = json.loads(next(line for line in out.splitlines() if "settlement_txid" in line))
    (api_store,) = tmp_path.glob("*/api.db")
    store = SQLiteStore(api_store)
    try:
        (channel,) = store.channels(Role.SERVER)  # the second client process resumed it
    finally:
        store.close()
    assert channel.paid == 1_000 + 21 * 100
    assert channel.status in (ChannelStatus.CLOSING, ChannelStatus.SETTLED)  # mined: either
    assert channel.settlement_tx is not None
    assert Transaction.parse(channel.settlement_tx).txid_hex == settlement["settlement_txid"]
