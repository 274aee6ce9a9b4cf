"""The server's half of re-anchoring (docs/design/reanchoring.md), mixed into ServerChannel;
its transitions are rows of server.py's one TABLE.

The server quotes (TERMS: nothing signed, nothing remembered but the scripts it quoted), then
checks the client-signed R against its stored channel and policy, signs it, asks its node,
and only then stores it (the pending re-anchor), broadcasts it and sends it back: its
signature leaves it only after R is stored. While a re-anchor is pending, every payment must
come signed on both contracts, and both signatures are stored before its ack.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING

from bitcoind_paychan.bitcoin.tx import Transaction, parse_outputs
from bitcoind_paychan.channel import messages, reanchor
from bitcoind_paychan.channel.contract import DUST, bad_tx
from bitcoind_paychan.channel.effects import (
    Broadcast,
    CheckReanchor,
    Effect,
    PrepareReanchor,
    Purpose,
    ReanchorEnded,
    ReanchorSigned,
    Send,
    StoreChannel,
)
from bitcoind_paychan.channel.machine import Input
from bitcoind_paychan.channel.records import ChannelRecord
from bitcoind_paychan.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from bitcoind_paychan.wire import pb

if TYPE_CHECKING:
    from bitcoind_paychan.channel.server import ServerChannel

T = pb.TwoWayChannelMessage
QUOTES_KEPT = 4  # quotes (payout script, fee rate) a connection remembers: one outstanding,
# and the few before it an R signed meanwhile may still follow
QUOTE_FRESH = 600  # s a quote's rate is reused for the next PROPOSE (no node asked meanwhile)


class ServerReanchoring:
    """Re-anchoring on the server's connection (a mixin of ServerChannel)."""

    reanchoring: bool  # negotiated: the kind can, the client said it can
    acked_change: int  # the client's change in the last payment acknowledged
    _wish: tuple[int, int]  # the client's PROPOSE: (top-up, time window)
    _quoted: deque[tuple[bytes, int, int]]  # (payout script, fee rate, when) quoted here, the
    # latest last, QUOTES_KEPT at most
    _preparing: bool  # a PrepareReanchor awaits its answer (it answers every PROPOSE)
    _checking: Transaction | None  # R complete, awaiting the node's answer
    _checking_terms: reanchor.Terms | None  # what that R states (its payout script's)
    _locked_offset: int | None  # the offset of the re-anchor promoted on this connection
    _maybe_current: bool  # resumed after a promotion: the client may not be behind

    def _machine(self) -> ServerChannel:
        return self  # type: ignore[return-value]

    def _open(self) -> bool:
        """The channel is open (not settling, not closed)."""
        raise NotImplementedError

    def _closed(self) -> bool:
        raise NotImplementedError

    def _reanchor_lead_left(self, now: int) -> bool:
        """C has long enough left for R to confirm before the server would settle it."""
        machine = self._machine()
        expiry = machine._record().contract.expiry
        return expiry - now > machine.policy.settle_margin + reanchor.REANCHOR_LEAD

    # -- the client's wish, the server's quote -------------------------------------------

    def _on_reanchor_propose(self, message: T) -> list[Effect]:
        machine = self._machine()
        self._require_negotiated()
        record, body = machine._record(), message.reanchor_propose
        if record.pending is not None or self._checking is not None:
            # Refused before anything is asked of the wallet or the node.
            return [Send(messages.reanchor_refused("another re-anchor of this channel is in "
                                                   "flight"))]
        self._wish = (body.top_up, body.time_window_secs)
        if self._preparing:
            return []  # the quote being prepared answers this one (pipelined PROPOSEs)
        if not self._quoted:
            self._preparing = True
            return [PrepareReanchor(record.channel_id)]
        # The latest quote's script again (one fresh wallet script per connection at most),
        # and while it is fresh its rate too: the node is not asked again.
        script, rate, when = self._quoted[-1]
        if machine.now - when < QUOTE_FRESH:
            return self._on_quote(rate, script, machine.now, True, 0)
        self._preparing = True
        return [PrepareReanchor(record.channel_id, script)]

    def quote_reanchor(self, fee_rate: int, payout_script: bytes, now: int,
                       payout: bool = True, time_window: int = 0) -> list[Effect]:
        """The answer to PrepareReanchor, or the application's own wish (a payout, a renewal
        of `time_window` s from `now`): REANCHOR_TERMS paying out what the client has
        acknowledged (when `payout` and it can pay its fee part above dust), at `fee_rate`
        sat/kvB. Nothing is signed or stored."""
        machine = self._machine()
        return machine._input(Input.REANCHOR_QUOTE, self._on_quote, fee_rate, payout_script,
                              now, payout, time_window)

    def reanchor_unquoted(self, why: str) -> list[Effect]:
        """The answer to PrepareReanchor when the adapter cannot quote (no fee estimate, no
        wallet script): REANCHOR_REFUSED saying `why`; the channel goes on."""
        machine = self._machine()
        return machine._input(Input.REANCHOR_QUOTE, self._on_unquoted, why)

    def _on_unquoted(self, why: str) -> list[Effect]:
        self._preparing, self._wish = False, (0, 0)
        return [Send(messages.reanchor_refused(why))]

    def _on_quote(self, fee_rate: int, payout_script: bytes, now: int, payout: bool,
                  time_window: int) -> list[Effect]:
        machine = self._machine()
        record = machine._record()
        self._preparing = False
        if not self.reanchoring:
            raise LocalProtocolError("re-anchoring was not negotiated on this channel (a "
                                     "bitcoinj client, or one that did not ask for it)")
        wish_top_up, wish_window = self._wish
        self._wish = (0, 0)
        if record.pending is not None or self._checking is not None:
            return []  # one re-anchor at a time: the one in flight goes on
        if not self._reanchor_lead_left(now):
            return [Send(messages.reanchor_refused(
                "the contract expires too soon to re-anchor: the server settles it"))]
        window = time_window or wish_window
        policy = machine.policy
        expiry = record.contract.expiry
        if window:
            expiry = max(expiry, now + min(max(window, policy.min_time_window),
                                           policy.max_time_window))
        fee_rate = min(fee_rate, policy.max_fee_rate)
        acked_paid = record.contract.value - self.acked_change
        vbytes_fee = -(-fee_rate * reanchor.payout_vbytes(payout_script) // 1000)
        amount = acked_paid if payout and acked_paid - vbytes_fee >= DUST else 0
        if not amount and expiry == record.contract.expiry and not wish_top_up:
            return [Send(messages.reanchor_refused("nothing to re-anchor"))]
        if not self._quoted or self._quoted[-1][:2] != (payout_script, fee_rate):
            self._quoted.append((payout_script, fee_rate, now))
        return [Send(messages.reanchor_terms(expiry, amount, payout_script, fee_rate))]

    # -- the client's signed R -------------------------------------------------------------

    def _on_reanchor_signed(self, message: T) -> list[Effect]:
        machine = self._machine()
        self._require_negotiated()
        record, body = machine._record(), message.reanchor_signed
        tx = Transaction.parse(body.tx)
        pending = record.pending
        if pending is not None and pending.complete and pending.txid == tx.txid_hex:
            return [Send(messages.reanchor_ack(pending.tx))]  # re-sent: stored already
        if record.generation and tx.txid_hex == record.contract_txid:
            return [Send(messages.reanchor_locked(tx.txid_hex))]  # re-sent: confirmed since
        if pending is not None or self._checking is not None:
            return [Send(messages.reanchor_refused("another re-anchor of this channel is in "
                                                   "flight"))]
        now = machine.now  # when this message arrived (the service's clock)
        if not self._reanchor_lead_left(now):
            return [Send(messages.reanchor_refused(
                "the contract expires too soon to re-anchor: the server settles it"))]
        policy = machine.policy
        terms = reanchor.Terms(body.expire_time_secs, body.payout, b"", body.fee_rate)
        if body.payout:
            if len(tx.outputs) < 2:
                raise bad_tx("a re-anchor with a payout has no payout output")
            terms = replace(terms, payout_script=tx.outputs[1].script_pubkey)
        spent = parse_outputs(body.spent_outputs) if body.spent_outputs else ()
        signed = reanchor.Signed(tx, terms, body.client_change_value, body.next_signature,
                                 body.client_signature, spent)
        rates = [rate for _, rate, _ in self._quoted]
        if rates and terms.fee_rate not in rates:
            raise bad_tx(f"the re-anchor's fee rate {terms.fee_rate} sat/kvB is not the rate "
                         f"quoted on this connection ({rates[-1]})")
        # A renewal never shortens C and always leaves the client's refund a window away
        # (so C' is at least as far as C, whose lead was just checked).
        candidate = reanchor.check_signed(
            record, signed, max(record.contract.expiry, now + policy.min_time_window),
            now + policy.max_time_window, policy.max_fee_rate)
        # Signed here, but nothing leaves before the node's answer and the store.
        complete = record.contract.complete_cooperative(tx, body.client_signature, record.key,
                                                        spent)
        self._checking, self._checking_terms = complete, terms
        self._locked_offset = None  # an earlier promotion's: payments pair with this R now
        machine.record = replace(record, pending=candidate)  # payments now come in pairs
        # A payout script this connection did not quote (R re-sent after a resume) is the
        # adapter's to check: it must be our wallet's; and with no quote here, the adapter
        # gives its fee estimate, for the rate to be checked against it.
        foreign = terms.payout_script not in {script for script, _, _ in self._quoted}
        return [CheckReanchor(complete, terms.payout_script if foreign else b"",
                              not self._quoted)]

    def reanchor_checked(self, refusal: str | None, fee: int | None = None,
                         estimate: int | None = None) -> list[Effect]:
        """The answer to CheckReanchor: None if the node would take R and the payout script
        is ours; `fee`, R's fee as the node counts it (testmempoolaccept's fees.base, sat);
        `estimate`, the server's fee rate now (sat/kvB; asked for an R not quoted here).
        Then, if R's fee keeps the fee rule (`reanchor.check_fee`), R is stored (the pending
        re-anchor), broadcast, and sent back; else the re-anchor is refused and the channel
        goes on, on its contract."""
        machine = self._machine()
        return machine._input(Input.REANCHOR_CHECKED, self._on_reanchor_checked, refusal, fee,
                              estimate)

    def _on_reanchor_checked(self, refusal: str | None, fee: int | None,
                             estimate: int | None) -> list[Effect]:
        machine = self._machine()
        complete, self._checking = self._checking, None
        terms, self._checking_terms = self._checking_terms, None
        record = machine._record()
        if complete is None or terms is None or record.pending is None:
            return []
        if refusal is None and not self._quoted and estimate is None:
            refusal = "the server has no fee estimate to check its rate against now"
        if refusal is None:
            refusal = reanchor.check_fee(record.contract, complete, terms, fee,
                                         None if self._quoted else estimate,
                                         machine.policy.max_fee_rate)
        if refusal is None and self._open():
            stored = replace(record, pending=replace(record.pending, tx=complete.serialize(),
                                                     complete=True))
            machine.record = stored
            return [StoreChannel(stored), Broadcast(complete, Purpose.REANCHOR,
                                                    stored.channel_id),
                    Send(messages.reanchor_ack(complete.serialize())), ReanchorSigned(stored)]
        machine.record = replace(record, pending=None)
        why = refusal or f"the channel is {machine.state.value}"
        effects: list[Effect] = [ReanchorEnded(record.channel_id, why)]
        if not self._closed():
            effects.insert(0, Send(messages.reanchor_refused(f"re-anchor refused: {why}")))
        return effects

    def _refuse_reanchor(self, message: T) -> list[Effect]:
        """A re-anchor message while the channel is settling: refused, nothing changes."""
        self._require_negotiated()
        return [Send(messages.reanchor_refused("the channel is settling"))]

    # -- payments while a re-anchor is pending, and its promotion --------------------------

    def _paired_payment(self, record: ChannelRecord, change: int, signature: bytes,
                        next_signature: bytes) -> ChannelRecord:
        """A payment during a re-anchor: verified on C' too (the caller verified it on C);
        the record holding both."""
        pending = record.pending
        assert pending is not None
        if not next_signature:
            raise bad_tx("a payment while a re-anchor is pending must also be signed on the "
                         "new contract (next_signature)")
        if change < DUST:
            raise bad_tx("a payment while a re-anchor is pending must leave change on the "
                         "contract; wait for the re-anchor to confirm")
        carried = change + pending.offset(record.contract)
        pending.contract.check_payment(carried, next_signature)
        return record.with_payments(change, signature, next_signature)

    def reanchor_confirmed(self, record: ChannelRecord) -> list[Effect]:
        """R confirmed and the stored channel was promoted (`record`, generation + 1): this
        connection's channel moves to the next contract too; payments from now on are
        signed on it alone."""
        machine = self._machine()
        return machine._input(Input.REANCHOR_CONFIRMED, self._on_reanchor_confirmed, record)

    def _on_reanchor_confirmed(self, record: ChannelRecord) -> list[Effect]:
        machine = self._machine()
        ours = machine.record
        if ours is None or ours.pending is None or ours.pending.txid != record.contract_txid:
            if ours is not None and ours.contract_txid == record.contract_txid:
                return []  # promoted already
            raise LocalProtocolError(f"channel {record.channel_id} has no pending re-anchor "
                                     f"creating {record.contract_txid}")
        offset = ours.pending.offset(ours.contract)
        machine.record = reanchor.promoted(ours)
        self.acked_change += offset
        self._locked_offset = offset  # payments the client signed on both before it knew
        if self._closed():
            return []
        return [Send(messages.reanchor_locked(record.contract_txid))]

    def _on_contract(self, body: pb.UpdatePayment) -> tuple[int, bytes]:
        """A payment's change and signature on the channel's contract: after a promotion (on
        this connection, or before a resume), a payment the client still signed on both
        contracts (before it got REANCHOR_LOCKED) counts by its signature on the new one. A
        resumed client's first such payment that verifies on the contract as it stands is of
        this generation (a next re-anchor's pair): the client is not behind."""
        record, offset = self._machine()._record(), self._locked_offset
        if offset is not None and body.next_signature and record.pending is None:
            if self._maybe_current:
                self._maybe_current = False
                try:
                    record.contract.check_payment(body.client_change_value, body.signature)
                    self._locked_offset = None
                    return body.client_change_value, body.signature
                except RemoteProtocolError:
                    pass  # signed on the contract before: counted on this one
            return body.client_change_value + offset, body.next_signature
        return body.client_change_value, body.signature

    def _require_negotiated(self) -> None:
        if not self.reanchoring:
            raise RemoteProtocolError("re-anchoring was not negotiated on this channel",
                                      ErrorCode.SYNTAX_ERROR)

