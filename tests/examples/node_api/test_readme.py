"""The example's README runs as written: a regtest node, `node_api` before `paychan gateway`,
`paychan fetch` buying RPC calls through one channel (each process resuming it), a method
off the allow-list refused, new blocks streamed and paid per second."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from bitcoind_paychan.channel.records import Role
from bitcoind_paychan.store import SQLiteStore
from regtest.fetch import cache_root
from tests.examples.node_api import EXAMPLE
from tests.test_readme import run_block, sh_block

CALLS = 1 + 1 + 5 + 5 + 2  # getblockcount, getblockhash, getblock, getrawtransaction, fee


def test_the_readme_runs_as_written(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "XDG_CACHE_HOME": str(cache_root().parent)}
    out, _ = run_block(sh_block(EXAMPLE / "README.md", "node-api"), env, tmp_path)
    assert "unpaid: 402" in out, out
    assert '{"result": 101}' in out, out  # getblockcount
    assert '{"error": "no route serves /rpc/stop"}stop: not for sale' in out  # the 404
    (folder,) = {p.parent for p in tmp_path.glob("*/shop.yaml")}
    tx = json.loads((folder / "tx.json").read_text())["result"]
    block_found = json.loads((folder / "block.json").read_text())["result"]
    assert block_found["height"] == 101 and tx["txid"] == block_found["tx"][0]
    blocks = [json.loads(line[5:]) for line in out.splitlines() if line.startswith("data: {")]
    assert [b["height"] for b in blocks] == [101, 102, 103], out
    log = (folder / "shop.log").read_text()
    assert len(re.findall(r"charged \d+ sat \(paid", log)) == 6  # 5 calls and the stream
    seconds = [int(m) for m in re.findall(r"charged (\d+) sat .* GET /blocks", log)]
    assert len(seconds) == 1 and seconds[0] >= 2 and seconds[0] % 2 == 0  # 2 sat a second
    store = SQLiteStore(folder / "shop.db")
    try:
        (channel,) = store.channels(Role.SERVER)  # every fetch process resumed it
    finally:
        store.close()
    calls = [int(m) for m in re.findall(r"charged (\d+) sat .* (?:GET|POST) /rpc/", log)]
    assert sum(calls) == CALLS
    # The opening payment's credit (told by the endpoint as each process resumed the
    # channel) covered every call and the stream: their requests carried no payment.
    assert sum(calls) + seconds[0] <= 1_000 and channel.paid == 1_000
