"""Re-anchoring a live channel (issue 23, docs/design/reanchoring.md): the pure rules both
machines follow. R spends the contract C (input 0, both keys) and, for a top-up, the client's
segwit coins; output 0 is the next contract C' (same keys, new expiry), output 1 the server's
payout when there is one, then at most the client's wallet change."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from bitcoind_paychan.bitcoin.tx import Transaction, TxIn, TxOut
from bitcoind_paychan.channel.contract import (
    DUST,
    Branch,
    Contract,
    bad_tx,
    contract_from_tx,
    output_script,
)
from bitcoind_paychan.channel.fees import reanchor_fees
from bitcoind_paychan.channel.records import ChannelRecord, PendingReanchor, Role
from bitcoind_paychan.errors import DecodeError, LocalProtocolError

REANCHOR_SEQUENCE = 0xFFFFFFFD  # R's input 0 signals replaceability (BIP125): the server's
# settlement of C replaces an R that has not confirmed by C's settle deadline
REANCHOR_TX_VERSION = 2
REANCHOR_LEAD = 3600  # s beyond the settle margin C must have left when R is signed, for R
# to confirm before the server would settle C instead


@dataclass(frozen=True)
class Terms:
    """The server's quote (REANCHOR_TERMS), and what REANCHOR_SIGNED restates."""

    expiry: int  # C''s expiry
    payout: int  # gross sat R pays the server: its payout output plus its fee part
    payout_script: bytes
    fee_rate: int  # sat/kvB


def payout_vbytes(script: bytes) -> int:
    return len(TxOut(0, script).serialize())


def is_pure_payout(current: Contract, tx: Transaction, expiry: int) -> bool:
    """No top-up (C:0 the one input) and no renewal: a partial settlement."""
    return len(tx.inputs) == 1 and expiry == current.expiry


def fees(current: Contract, tx: Transaction, terms: Terms, top_up: bool = False
         ) -> tuple[int, int]:
    """(client, server) fee parts of `tx` (R, wallet inputs signed, input 0 not yet) by the
    one rule (`fees.reanchor_fees`), sizing input 0 with worst-case signatures. `top_up`:
    `tx` is the draft the client's wallet is still to fund (so never a pure payout)."""
    vsize = current.sign_settlement(tx, bytes(current.kind.scheme.max_size), None).vsize
    vbytes = payout_vbytes(terms.payout_script) if terms.payout else 0
    return reanchor_fees(vsize, vbytes, terms.fee_rate,
                         not top_up and is_pure_payout(current, tx, terms.expiry))


def _tx(current: Contract, terms: Terms, value: int, payout: int) -> Transaction:
    script = output_script(current.version, current.client_pub, current.server_pub,
                           terms.expiry)
    outputs = [TxOut(value, script)]
    if terms.payout:
        outputs.append(TxOut(payout, terms.payout_script))
    return Transaction(REANCHOR_TX_VERSION, (TxIn(current.outpoint, b"", REANCHOR_SEQUENCE),),
                       tuple(outputs), 0)


def draft(current: Contract, terms: Terms, top_up: int) -> Transaction:
    """R as the client builds it: complete without a top-up (the client's fee part from its
    money in C); with one, the draft its wallet funds (inputs worth `top_up` plus the
    client's fee part, and change), C' holding C's value plus `top_up` less the payout."""
    shape = _tx(current, terms, 0, 0)
    client_fee, server_fee = fees(current, shape, terms, top_up > 0)
    if top_up:  # the wallet adds inputs: never a pure payout, the server pays its output
        return _tx(current, terms, current.value + top_up - terms.payout,
                   terms.payout - server_fee)
    return _tx(current, terms, current.value - terms.payout - client_fee,
               terms.payout - server_fee)


def check_terms(record: ChannelRecord, acked_change: int, terms: Terms, top_up: int,
                latest_expiry: int, max_fee_rate: int) -> str | None:
    """The client's checks of a quote before it funds or signs anything; the reason it
    declines, or None. The payout is at most what the server acknowledged (never what is
    only in flight), the rate within our cap, the expiry not earlier than C's nor later
    than our window, and what stays ours in C' no dust."""
    current = record.contract
    acked_paid = current.value - acked_change
    if terms.payout > acked_paid:
        return (f"the server asks a payout of {terms.payout} sat, more than the {acked_paid} "
                "sat it acknowledged")
    if terms.fee_rate > max_fee_rate:
        return f"fee rate {terms.fee_rate} sat/kvB is above our cap of {max_fee_rate}"
    if not current.expiry <= terms.expiry <= latest_expiry:
        return (f"expiry {terms.expiry} is outside [{current.expiry}, {latest_expiry}] (the "
                "current one, our window)")
    if not top_up and not terms.payout and terms.expiry == current.expiry:
        return "nothing to re-anchor: no top-up, no payout, no renewal"
    tx = draft(current, terms, top_up)
    if terms.payout and tx.outputs[1].value < DUST:
        return f"the payout of {terms.payout} sat cannot pay its fee and stay above dust"
    carried = record.change + tx.outputs[0].value + terms.payout - current.value
    if carried < DUST:
        return (f"the new contract would leave us {carried} sat: pay less before "
                "re-anchoring, or top up")
    return None


def check_funded(draft_tx: Transaction, funded: Transaction) -> None:
    """The client's check of its wallet's answer to FundReanchor: the draft's input 0 and
    outputs unchanged and first, only native segwit inputs added (R's txid is final: C' is
    R:0), at most one output added (the change). LocalProtocolError otherwise."""
    kept = (funded.inputs[:1] == draft_tx.inputs
            and funded.outputs[:len(draft_tx.outputs)] == draft_tx.outputs
            and len(funded.outputs) <= len(draft_tx.outputs) + 1
            and funded.version == draft_tx.version and funded.locktime == 0)
    if not kept:
        raise LocalProtocolError("the wallet changed the re-anchor's contract input or outputs")
    if any(txin.script_sig or not txin.witness for txin in funded.inputs[1:]):
        raise LocalProtocolError("the wallet funded the re-anchor with non-segwit coins")


def check_spent(current: Contract, tx: Transaction, spent: tuple[TxOut, ...],
                error: Callable[[str], Exception]) -> None:
    """R's spent outputs as its kind signs them: one for each input after the contract when
    the kind's re-anchor signatures commit to them (BIP341), none otherwise. The node checks
    they are the true ones: a signature over others does not verify on chain."""
    wanted = len(tx.inputs) - 1 if current.kind.reanchor_needs_spent else 0
    if len(spent) != wanted:
        raise error(f"the re-anchor names {len(spent)} spent outputs; its version "
                    f"{current.version} signatures need {wanted}")


@dataclass(frozen=True)
class Signed:
    """What REANCHOR_SIGNED carries, parsed."""

    tx: Transaction  # R, input 0 unsigned
    terms: Terms
    change: int  # the client's change on C the carry payment continues
    next_signature: bytes  # that payment on C'
    client_signature: bytes  # the client's signature of R's input 0
    spent: tuple[TxOut, ...] = ()  # the outputs R's inputs 1.. spend (a kind that needs them)


def next_contract(current: Contract, tx: Transaction, expiry: int) -> Contract:
    """C' = R:0, checked to be the kind's script for our keys and `expiry`."""
    return contract_from_tx(current.version, tx, current.client_pub, current.server_pub, expiry)


def check_signed(record: ChannelRecord, signed: Signed, earliest: int, latest: int,
                 max_fee_rate: int) -> PendingReanchor:
    """The server's checks of REANCHOR_SIGNED against its stored channel and policy (never a
    remembered quote: the message is re-sent after a resume). Raises RemoteProtocolError;
    returns the pending re-anchor (not complete: the server has not signed it yet).
    `earliest`/`latest` bound a renewed expiry (C's own is always allowed)."""
    current, tx, terms = record.contract, signed.tx, signed.terms
    if tx.version != REANCHOR_TX_VERSION or tx.locktime != 0:
        raise bad_tx(f"the re-anchor must be version {REANCHOR_TX_VERSION}, lock time 0")
    first = tx.inputs[0] if tx.inputs else None
    if first is None or first.prevout != current.outpoint or (
            first.sequence != REANCHOR_SEQUENCE):
        raise bad_tx("the re-anchor's input 0 must spend the contract, sequence 0xfffffffd")
    if any(txin.script_sig or not txin.witness for txin in tx.inputs[1:]):
        raise bad_tx("the re-anchor's other inputs must be native segwit, signed")
    check_spent(current, tx, signed.spent, bad_tx)
    if terms.expiry != current.expiry and not earliest <= terms.expiry <= latest:
        raise bad_tx(f"the new expiry {terms.expiry} is outside [{earliest}, {latest}]")
    nxt = next_contract(current, tx, terms.expiry)
    if terms.payout > record.paid:
        raise bad_tx(f"the re-anchor pays out {terms.payout} sat; {record.paid} sat are paid")
    if terms.fee_rate > max_fee_rate:
        raise bad_tx(f"fee rate {terms.fee_rate} sat/kvB is above the cap {max_fee_rate}")
    client_fee, server_fee = fees(current, tx, terms)
    rest = tx.outputs[1:]
    if terms.payout:
        if not rest or rest[0] != TxOut(terms.payout - server_fee, terms.payout_script):
            raise bad_tx(f"output 1 must pay exactly {terms.payout - server_fee} sat (the "
                         f"payout of {terms.payout} less the server's fee part) to its script")
        rest = rest[1:]
    if len(rest) > (1 if len(tx.inputs) > 1 else 0):
        raise bad_tx("the re-anchor has outputs other than the contract, the payout and the "
                     "client's change")
    if len(tx.inputs) == 1 and nxt.value != current.value - terms.payout - client_fee:
        raise bad_tx(f"the new contract must hold {current.value - terms.payout - client_fee}"
                     " sat (the contract less the payout and the client's fee part)")
    if signed.change != record.change:
        raise bad_tx(f"the re-anchor carries change {signed.change}, not the channel's "
                     f"{record.change}")
    pending = PendingReanchor(tx.serialize(), nxt, terms.payout, terms.fee_rate, 0, b"")
    carried = record.change + pending.offset(current)
    if carried < DUST:
        raise bad_tx(f"the new contract would leave the client {carried} sat (dust)")
    nxt.check_payment(carried, signed.next_signature)
    current.check_cooperative("the re-anchor's", tx, signed.client_signature,
                              spent=signed.spent)
    return PendingReanchor(tx.serialize(), nxt, terms.payout, terms.fee_rate, carried,
                           signed.next_signature, spent=signed.spent)


def check_fee(current: Contract, tx: Transaction, terms: Terms, fee: int | None,
              estimate: int | None, max_fee_rate: int) -> str | None:
    """The server's check of R's fee (complete, its node asked): why it refuses R, or None.
    `estimate` (sat/kvB) is given for an R not quoted on this connection (re-sent after a
    resume): its rate may not be below the estimate (nor above the cap: `check_signed`); a
    pure payout, which the server pays, not above it either (no more than settling C would
    cost it now). With wallet inputs, R's real `fee` (the node's count) must pay the stated
    rate on R's size: the server's part, taken from its payout, is priced at that rate."""
    if estimate is not None:
        rate = min(estimate, max_fee_rate)
        if is_pure_payout(current, tx, terms.expiry):
            if terms.fee_rate > rate:
                return (f"it pays out at {terms.fee_rate} sat/kvB, more than the server's rate "
                        f"now ({rate}), at which it would settle the contract")
        elif terms.fee_rate < rate:
            return (f"its fee rate {terms.fee_rate} sat/kvB is below the server's estimate "
                    f"now ({rate})")
    if len(tx.inputs) > 1:
        needed = -(-terms.fee_rate * tx.vsize // 1000)
        if fee is None:
            return "the server's node did not count its fee"
        if fee < needed:
            return (f"it pays {fee} sat in fees, less than its stated rate of {terms.fee_rate} "
                    f"sat/kvB asks on its {tx.vsize} vB ({needed} sat)")
    return None


def promoted(record: ChannelRecord) -> ChannelRecord:
    """The record once R confirmed: C' is the contract, the carried payment its payment, one
    generation more, nothing pending. Only a complete pending re-anchor is promoted."""
    pending = record.pending
    if pending is None or not pending.complete:
        raise LocalProtocolError(f"channel {record.channel_id} has no complete re-anchor")
    return replace(record, contract=pending.contract, contract_tx=pending.tx,
                   change=pending.change, signature=pending.signature,
                   generation=record.generation + 1, origin=record.channel_id, pending=None)


def promotion_depth(r: Transaction, confirmations: int, final: int) -> int:
    """The blocks R must be buried before either side promotes the channel to C' (and drops
    C's settlement signatures, or its refund). An R spending only C:0 stays valid through a
    reorg and is sent again: `max(1, confirmations)`. A top-up R also spends the client's
    wallet coins, which the client could spend elsewhere once a reorg put R back in the
    mempool, leaving C funded again with neither side holding its settlement or refund: such
    an R is promoted only `final` deep (the watcher's `forget_depth`, design 5)."""
    return max(1, confirmations, final if len(r.inputs) > 1 else 1)


def check_complete(current: Contract, tx: Transaction, pending: PendingReanchor) -> None:
    """The client's check of the R the server sends back (REANCHOR_ACK): the one it signed
    (same txid), input 0 unlocked on the 2-of-2 branch with the server's valid signature.
    RemoteProtocolError otherwise."""
    if tx.txid_hex != pending.txid:
        raise bad_tx("REANCHOR_ACK for a re-anchor we have not signed")
    try:
        sigs, branch = current.kind.unlocking(tx)
    except (DecodeError, ValueError, IndexError):
        raise bad_tx("the re-anchor's input 0 is not unlocked by the contract's script") from None
    if branch is not Branch.COOPERATIVE or len(sigs) != 2:
        raise bad_tx("the re-anchor's input 0 does not carry both signatures")
    current.check_cooperative("the server's re-anchor", tx, sigs[1], current.server_key,
                              pending.spent)


def without_unchecked(record: ChannelRecord) -> ChannelRecord:
    """A server's record as a new connection takes it: a pending re-anchor binds only once
    stored complete; one it was still checking (its payments stored with it) when the
    connection or process ended was never signed out, and is dropped."""
    if record.role is Role.SERVER and record.pending and not record.pending.complete:
        return replace(record, pending=None)
    return record
