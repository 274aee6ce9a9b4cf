"""Contract kinds: one module per version behind one interface, named capabilities, and a
registry that is the only place a version number means anything."""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from pathlib import Path

import pytest

import bitcoind_paychan
from bitcoind_paychan.bitcoin.hashes import sha256
from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.contract import Branch, Contract
from bitcoind_paychan.channel.effects import Send
from bitcoind_paychan.channel.kinds import registry
from bitcoind_paychan.channel.kinds.base import Capabilities
from bitcoind_paychan.channel.server import ServerChannel, ServerPolicy
from bitcoind_paychan.cli import parser
from bitcoind_paychan.errors import DecodeError, LocalProtocolError, PolicyError

PACKAGE = Path(bitcoind_paychan.__file__).parent
COMPARISON = re.compile(r"version *(==|!=|>=|<=|<|>) *[0-9]")
CLIENT, SERVER = PrivateKey(sha256(b"kinds client")), PrivateKey(sha256(b"kinds server"))
EXPIRY, VALUE = 1_700_000_000, 1_000_000


def contract(version: int) -> Contract:
    return Contract(version, CLIENT.pub.data, SERVER.pub.data, EXPIRY,
                    OutPoint(sha256(b"funding"), 0), VALUE)


def test_no_version_is_compared_outside_the_registry() -> None:
    found = [f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py"))
             if path != PACKAGE / "channel" / "kinds" / "registry.py"
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if COMPARISON.search(line)]
    assert found == []


def test_the_comparison_check_sees_what_it_forbids() -> None:
    assert COMPARISON.search("if self.version >= 3:")
    assert COMPARISON.search("contract.version==1")
    assert not COMPARISON.search("if self.capabilities.presigned_refund:")


def test_the_registry() -> None:
    assert registry.VERSIONS == (1, 2, 3, 4)
    assert [registry.KINDS[v].version for v in registry.VERSIONS] == [1, 2, 3, 4]
    assert registry.DEFAULT_VERSION == 4
    assert registry.FALLBACK == {4: 3, 3: 2}  # never to 1 unasked: Knots does not relay it
    with pytest.raises(LocalProtocolError, match="unknown channel version 9"):
        registry.kind_of(9)


def test_the_cli_offers_the_registry_s_versions() -> None:
    (commands,) = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    (action,) = [a for a in commands.choices["demo"]._actions if a.dest == "version"]
    assert tuple(action.choices or ()) == registry.VERSIONS
    assert action.default == registry.DEFAULT_VERSION
    assert all(registry.KINDS[v].title in (action.help or "") for v in registry.VERSIONS)


def test_capabilities_by_name() -> None:
    caps = {v: registry.KINDS[v].capabilities for v in registry.VERSIONS}
    assert caps[1] == Capabilities(presigned_refund=True)
    assert caps[2] == Capabilities()
    assert caps[3] == Capabilities(segwit_funding_required=True, resume_challenge=True,
                                   reanchoring=True)
    # v4 re-anchors with R signed over every input (tests/channel/test_reanchor.py)
    assert caps[4] == replace(caps[3], key_path_close=True)
    assert all(c.pipelining for c in caps.values())


def test_a_server_policy_names_only_known_versions() -> None:
    with pytest.raises(PolicyError, match="versions"):
        ServerPolicy(versions=(2, 7))
    with pytest.raises(PolicyError, match="versions"):
        ServerPolicy(versions=())


@pytest.mark.parametrize(("version", "branch"), [
    (version, branch) for version in registry.VERSIONS
    for branch in contract(version).kind.branches])
def test_a_spend_reads_back_as_it_was_unlocked(version: int, branch: Branch) -> None:
    c = contract(version)
    sigs = [bytes([n]) * 71 for n in range(1, 1 + len(c.kind.signers(branch)))]
    spent = c.with_spend(c.refund_tx(1000), sigs, branch)
    read, read_branch = c.kind.unlocking(spent)
    assert read == sigs
    # The bare 2-of-2 has one branch: its pre-signed refund reads as both keys' spend.
    assert read_branch is (Branch.COOPERATIVE if c.kind.capabilities.presigned_refund
                           else branch)


@pytest.mark.parametrize("version", [2, 3, 4])
def test_a_spend_of_another_script_does_not_read_back(version: int) -> None:
    c, other = contract(version), replace(contract(version), expiry=EXPIRY + 1)
    spent = other.with_spend(other.payment_tx(5000), [b"c", b"s"], Branch.COOPERATIVE)
    with pytest.raises(DecodeError):
        c.kind.unlocking(spent)


@pytest.mark.parametrize("version", registry.VERSIONS)
def test_the_spend_weight_is_the_signed_input_s_at_most(version: int) -> None:
    """The weight a wallet adds for contract:0 covers a real cooperative spend of it (the
    wallet's own input is segwit: the marker and flag are there either way)."""
    c = contract(version)
    wallet_in = TxIn(OutPoint(sha256(b"wallet"), 1), b"", 0xFFFFFFFF, (bytes(72), bytes(33)))
    draft = c.settlement_draft(10_000, VALUE - 20_000, b"\x00\x14" + bytes(20))
    bare = Transaction(1, (*draft.inputs[1:], wallet_in), draft.outputs, 0)
    funded = Transaction(1, (*draft.inputs, wallet_in), draft.outputs, 0)
    signed = c.sign_settlement(funded, c.sign_payment(CLIENT, 10_000), SERVER)
    added = signed.weight - bare.weight
    # ECDSA signatures are 70-73 bytes (scriptSig bytes weigh 4), Schnorr ones 65; the
    # marker and flag may count twice.
    assert 0 <= c.spend_weight() - added <= 2 + 4 * 2 * 3
    assert c.kind.scheme.verify(c.server_key, c.sighash(signed, c.kind.final_hashtype),
                                c.kind.scheme.split(c.kind.unlocking(signed)[0][1])[0])


@pytest.mark.parametrize("version", registry.VERSIONS)
def test_the_cached_payment_sighash_is_the_sighash_of_the_payment(version: int) -> None:
    c = contract(version)
    for change in (0, 546, 123_456, VALUE):
        tx = c.payment_tx(change)
        hashtype = c.kind.scheme.split(c.sign_payment(CLIENT, change))[1]
        assert c.payment_sighash(change) == c.sighash(tx, hashtype)


def test_a_kind_without_pipelining_offers_no_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Capabilities drive the machines: a kind that does not pipeline gets stop and wait."""
    plain = type("StopAndWait", (registry.KINDS[2],),
                 {"capabilities": Capabilities(pipelining=False)})
    monkeypatch.setitem(registry.KINDS, 2, plain)
    assert not hello(2).server_version.HasField("payment_window")
    monkeypatch.undo()
    assert hello(2).server_version.payment_window == 64


def hello(version: int) -> messages.T:
    """The SERVER_VERSION a server answers a new channel's CLIENT_VERSION with."""
    server = ServerChannel(ServerPolicy(), SERVER, EXPIRY - 86_400)
    first = server.receive(messages.client_version(version, 86_400, None))[0]
    assert isinstance(first, Send)
    return first.message


@pytest.mark.parametrize("version", registry.VERSIONS)
def test_every_kind_refunds(version: int) -> None:
    c = contract(version)
    presigned = None
    if c.kind.capabilities.presigned_refund:
        opening = c.refund_tx(c.kind.presigned_refund_fee)
        presigned = c.sign_refund(CLIENT, opening, c.sign_refund_as_server(SERVER, opening))
    refund = c.refund(CLIENT, 2_000, presigned.serialize() if presigned else None)
    sigs, branch = c.kind.unlocking(refund)
    for key, sig in zip(c.kind.signers(branch), sigs, strict=True):
        body, hashtype = c.kind.scheme.split(sig)
        assert c.kind.scheme.verify(key, c.sighash(refund, hashtype, Branch.REFUND), body)
    assert refund.outputs == (TxOut(VALUE - c.refund_fee(2_000), c.change_script),)
