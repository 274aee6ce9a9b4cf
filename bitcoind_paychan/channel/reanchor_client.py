"""The client's half of re-anchoring (docs/design/reanchoring.md), mixed into ClientChannel;
its transitions are rows of client.py's one TABLE.

The client checks the server's quote (never a payout above what the server acknowledged),
builds R itself (its wallet funds a top-up), signs it and the payment carried onto the next
contract, and stores all of it before it sends anything: from then on the server can
complete R alone. Until R confirms, every payment is signed on both contracts.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from bitcoind_paychan.bitcoin.tx import Transaction, TxOut
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel import reanchor as rules
from bitcoind_paychan.channel.contract import DUST, Branch, bad_tx, round_change
from bitcoind_paychan.channel.effects import (
    Effect,
    FundReanchor,
    ReanchorEnded,
    ReanchorLocked,
    ReanchorOffered,
    ReanchorSigned,
    Send,
    StoreChannel,
)
from bitcoind_paychan.channel.fees import reanchor_rate_ceiling
from bitcoind_paychan.channel.machine import Input
from bitcoind_paychan.channel.records import ChannelRecord, PendingReanchor
from bitcoind_paychan.errors import LocalProtocolError, RemoteProtocolError
from bitcoind_paychan.wire import pb

if TYPE_CHECKING:
    from bitcoind_paychan.channel.client import ClientChannel

T = pb.TwoWayChannelMessage
EXPIRY_SLACK = 60  # seconds of clock difference tolerated on the server's expiry


class ClientReanchoring:
    """Re-anchoring on the client's connection (a mixin of ClientChannel)."""

    reanchoring: bool  # negotiated: the kind can, the server offered it
    _wish: tuple[int, int, int] | None  # our PROPOSE: (top-up, time window, highest rate);
    # None: we asked for nothing
    _funding: tuple[rules.Terms, Transaction] | None  # terms and draft awaiting the wallet
    _offered: rules.Terms | None  # the server's unasked payout, awaiting our autopilot
    _funding_refused: bool  # the server refused while our wallet funded: its answer ends it
    _crossed: bool  # our PROPOSE's renewal met one quote keeping the expiry already

    def _machine(self) -> ClientChannel:
        return self  # type: ignore[return-value]

    def _paying(self) -> bool:
        """The channel is open (a payment may be in flight): a re-anchor may be signed."""
        raise NotImplementedError

    @property
    def acked_change(self) -> int:
        """Our change in the last payment the server acknowledged (payments in flight are
        stored and signed, not acknowledged)."""
        machine = self._machine()
        return machine._stored().change + sum(amount for amount, _ in machine._in_flight)

    def reanchor(self, top_up: int, time_window: int, now: int,
                 fee_estimate: int | None = None) -> list[Effect]:
        """Ask the server for a re-anchor: add `top_up` sat from our wallet, renew to
        `time_window` s from `now` (0: keep the expiry); the server may add a payout of what
        we owe. Nothing is signed before its quote is checked, its rate at most our node's
        `fee_estimate` (sat/kvB) plus `fees.REANCHOR_RATE_SLACK` (None: the cap alone)."""
        machine = self._machine()
        return machine._input(Input.REANCHOR, self._on_reanchor, top_up, time_window, now,
                              fee_estimate)

    def _on_reanchor(self, top_up: int, time_window: int, now: int,
                     fee_estimate: int | None) -> list[Effect]:
        machine = self._machine()
        record = machine._stored()
        if not self.reanchoring:
            raise LocalProtocolError("this channel's server did not offer re-anchoring")
        if top_up < 0 or time_window < 0:
            raise LocalProtocolError("a top-up and a time window are never negative")
        if record.pending is not None and not record.pending.binding:
            raise LocalProtocolError(
                f"channel {record.channel_id} holds a refused re-anchor its server could still "
                "complete; it must be known dead (a top-up input spent, or the contract spent "
                "otherwise) before another is signed, or C' could not be found to refund it")
        if record.pending is not None or self._funding or self._funding_refused:
            raise LocalProtocolError(f"channel {record.channel_id} has a re-anchor in flight")
        cap = machine.policy.max_fee_rate
        machine.now = max(machine.now, now)
        self._offered = None  # our own proposal's answer pays any payout offered too
        self._crossed = False
        self._wish = (top_up, time_window, cap if fee_estimate is None
                      else reanchor_rate_ceiling(fee_estimate, cap))
        return [Send(messages.reanchor_propose(top_up, time_window))]

    # -- the server's quote ----------------------------------------------------------------

    def _on_reanchor_terms(self, message: T) -> list[Effect]:
        machine = self._machine()
        record = machine._stored()
        if not self.reanchoring:
            raise RemoteProtocolError("re-anchor terms on a channel that did not negotiate "
                                      "re-anchoring")
        wish, self._wish = self._wish, None
        if self._busy(record):
            return []  # closing, or one in flight or refused: the quote binds nobody
        body = message.reanchor_terms
        terms = rules.Terms(body.expire_time_secs, body.payout, body.payout_script,
                               body.fee_rate)
        renews = terms.expiry != record.contract.expiry
        if (wish is not None and wish[1] and not renews and not self._crossed
                and machine.now + wish[1] > record.contract.expiry):
            # We asked for a renewal; the first quote that keeps the expiry is taken for the
            # server's unasked payout crossing our PROPOSE on the wire: its answer to ours
            # comes next (a second such quote is that answer: a renewal it capped; a quote
            # we would decline anyway ends it now).
            if why := self._declined(record, terms, wish):
                return [ReanchorEnded(record.channel_id, why)]
            self._wish, self._crossed = wish, True
            return []
        if wish is None and renews:
            # Unasked: only a payout the server pays (a partial settlement) is signed; a
            # renewal costs us its fee, so we sign one only when we asked for it.
            return [ReanchorEnded(record.contract_txid, "declined the server's unasked "
                                  "terms: only a payout it pays is signed unasked")]
        policy = machine.policy
        if wish is None and (policy.refill_below or policy.renew_before):
            # Our autopilot may want a top-up or a renewal now: it proposes it (the answer
            # pays this payout too, in one R) or signs the payout alone (accept_offer).
            self._offered = terms
            return [ReanchorOffered(record.contract_txid, terms.payout)]
        return self._take_terms(record, terms, wish)

    def _declined(self, record: ChannelRecord, terms: rules.Terms,
                  wish: tuple[int, int, int] | None) -> str | None:
        """Why we decline `terms` given what we asked (`wish`), or None."""
        machine = self._machine()
        top_up, window, max_rate = wish or (0, 0, machine.policy.max_fee_rate)
        latest = machine.now + (window or machine.policy.time_window) + EXPIRY_SLACK
        why = rules.check_terms(record, self.acked_change, terms, top_up,
                                   max(latest, record.contract.expiry), max_rate)
        return f"declined the server's terms: {why}" if why else None

    def accept_offer(self) -> list[Effect]:
        """The answer to ReanchorOffered when our autopilot wants nothing now: sign the
        server's unasked payout (checked again: the channel may have moved meanwhile)."""
        machine = self._machine()
        return machine._input(Input.REANCHOR_FUNDED, self._on_accept_offer)

    def _on_accept_offer(self) -> list[Effect]:
        terms, self._offered = self._offered, None
        record = self._machine()._stored()
        if terms is None or self._busy(record):
            return []  # superseded by our own proposal, closing, or one in flight
        return self._take_terms(record, terms, None)

    def _busy(self, record: ChannelRecord) -> bool:
        """No quote can be taken now: closing, or a re-anchor in flight (being funded, a
        refused one's funding still in the wallet, or pending)."""
        return (not self._paying() or self._funding is not None or self._funding_refused
                or record.pending is not None)

    def _take_terms(self, record: ChannelRecord, terms: rules.Terms,
                    wish: tuple[int, int, int] | None) -> list[Effect]:
        """Check a quote against what we asked (`wish`; None: unasked), then fund R (a
        top-up) or sign it."""
        if why := self._declined(record, terms, wish):
            return [ReanchorEnded(record.channel_id, why)]
        top_up = wish[0] if wish else 0
        draft = rules.draft(record.contract, terms, top_up)
        if top_up:
            self._funding = (terms, draft)
            return [FundReanchor(draft, record.contract.kind.input_weight(Branch.COOPERATIVE),
                                 terms.fee_rate)]
        return self._sign_reanchor(record, terms, draft)

    def reanchor_funded(self, funded: Transaction, spent: tuple[TxOut, ...] = ()
                        ) -> list[Effect]:
        """The answer to FundReanchor: R with our wallet's inputs (signed) and change, and the
        outputs those inputs spend (needed by a kind whose re-anchor signatures commit to
        them: `kind.reanchor_needs_spent`)."""
        machine = self._machine()
        return machine._input(Input.REANCHOR_FUNDED, self._on_reanchor_funded, funded, spent)

    def reanchor_unfunded(self, why: str) -> list[Effect]:
        """The answer to FundReanchor when the wallet could not fund the top-up (`why`):
        nothing was signed; the channel goes on, and a later re-anchor may be asked."""
        machine = self._machine()
        return machine._input(Input.REANCHOR_FUNDED, self._on_reanchor_unfunded, why)

    def _on_reanchor_unfunded(self, why: str) -> list[Effect]:
        if self._funding_refused:  # ended already: the server refused meanwhile
            self._funding_refused = False
            return []
        if self._funding is None:
            raise LocalProtocolError("no re-anchor is being funded")
        self._funding = None
        record = self._machine()._stored()
        return [ReanchorEnded(record.channel_id, f"our wallet could not fund the top-up: "
                              f"{why}; nothing was signed")]

    def _on_reanchor_funded(self, funded: Transaction, spent: tuple[TxOut, ...]
                            ) -> list[Effect]:
        machine = self._machine()
        funding, self._funding = self._funding, None
        record = machine._stored()
        if funding is None and self._funding_refused:
            self._funding_refused = False
            return [ReanchorEnded(record.channel_id, "the server refused while our wallet "
                                  "funded the top-up; nothing was signed", funded)]
        if funding is None:
            raise LocalProtocolError("no re-anchor is being funded")
        terms, draft = funding
        if not self._paying():
            return [ReanchorEnded(record.channel_id, f"the channel is {machine.state.value}"
                                  "; nothing was signed", funded)]
        if not record.contract.kind.reanchor_needs_spent:
            spent = ()  # its signatures commit to no other input's output
        try:
            rules.check_funded(draft, funded)
            rules.check_spent(record.contract, funded, spent, LocalProtocolError)
        except LocalProtocolError as exc:  # our wallet's answer is not what we asked for
            return [ReanchorEnded(record.channel_id, f"{exc}; nothing was signed", funded)]
        return self._sign_reanchor(record, terms, funded, spent)

    def _sign_reanchor(self, record: ChannelRecord, terms: rules.Terms, tx: Transaction,
                       spent: tuple[TxOut, ...] = ()) -> list[Effect]:
        """Sign R's input 0 and our current payment on C', store it all, then send it."""
        machine = self._machine()
        nxt = rules.next_contract(record.contract, tx, terms.expiry)
        carried = record.change + nxt.value + terms.payout - record.contract.value
        if carried < DUST:  # paid on since the quote: C' would hold nothing of ours
            return [ReanchorEnded(record.channel_id, "the new contract would leave us "
                                  f"{carried} sat; nothing was signed",
                                  tx if len(tx.inputs) > 1 else None)]
        next_signature = nxt.sign_payment(machine.key, carried)
        pending = PendingReanchor(tx.serialize(), nxt, terms.payout, terms.fee_rate, carried,
                                  next_signature, spent=spent)
        machine.record = stored = replace(record, pending=pending)
        return [StoreChannel(stored), Send(self._signed_message(stored))]

    def _signed_message(self, record: ChannelRecord) -> T:
        """REANCHOR_SIGNED for the stored pending re-anchor (sent again after a resume)."""
        pending = record.pending
        assert pending is not None
        tx = Transaction.parse(pending.tx)
        client_signature = record.contract.sign_cooperative(self._machine().key, tx,
                                                            pending.spent)
        return messages.reanchor_signed(pending.tx, pending.contract.expiry, pending.payout,
                                        pending.fee_rate, record.change, pending.signature,
                                        client_signature, pending.spent)

    # -- the server's answer ---------------------------------------------------------------

    def _on_reanchor_ack(self, message: T) -> list[Effect]:
        machine = self._machine()
        record = machine._stored()
        pending = record.pending
        tx = Transaction.parse(message.reanchor_ack.tx)
        if pending is None or pending.refused:
            raise bad_tx("REANCHOR_ACK for a re-anchor we have not signed")
        rules.check_complete(record.contract, tx, pending)
        if pending.complete:
            return []
        # Only input 0's witness is the server's to give: our wallet inputs keep our own.
        ours = Transaction.parse(pending.tx)
        complete = ours.with_witness(0, tx.inputs[0].witness)
        machine.record = stored = replace(record, pending=replace(
            pending, tx=complete.serialize(), complete=True))
        return [StoreChannel(stored), ReanchorSigned(stored)]

    def _on_reanchor_refused(self, message: T) -> list[Effect]:
        """The server refused (or declined to quote): we stop signing on C', but keep R's
        record until R cannot confirm (a server could still complete it: it pays it no more
        than agreed, and C' is ours to refund)."""
        machine = self._machine()
        record = machine._stored()
        why = message.reanchor_refused.explanation or "no reason given"
        self._wish = None  # answered: a later quote is not this PROPOSE's answer
        if self._funding is not None:  # our wallet is funding it: its answer ends it
            self._funding, self._funding_refused = None, True
        pending = record.pending
        if pending is None or pending.complete or pending.refused:
            return [ReanchorEnded(record.channel_id, f"the server refused: {why}")]
        machine.record = stored = replace(record, pending=replace(pending, refused=True))
        tx = Transaction.parse(pending.tx)
        return [StoreChannel(stored), ReanchorEnded(record.channel_id,
                                                    f"the server refused: {why}",
                                                    tx if len(tx.inputs) > 1 else None)]

    # -- payments during the re-anchor, promotion ------------------------------------------

    def _paired(self, record: ChannelRecord, amount: int) -> int | None:
        """The change a payment of `amount` leaves while a re-anchor binds payments (None:
        no re-anchor binds them). Refused when the contract could not cover it: it waits for
        the re-anchor to confirm."""
        pending = record.pending
        if pending is None or not pending.binding:
            return None
        change = round_change(record.change - amount)
        if change < DUST or change + pending.offset(record.contract) < DUST:
            raise LocalProtocolError(
                f"a payment of {amount} sat would leave the contract without change while a "
                f"re-anchor of channel {record.channel_id} is pending: it waits for the "
                "re-anchor to confirm")
        return change

    def _on_reanchor_locked(self, message: T) -> list[Effect]:
        """The server moved the channel to C' (R confirmed). Its word alone is no reason to
        drop C (and its refund): the adapter promotes us once our own node shows R
        confirmed; until then we sign on both (the server counts such a payment on C')."""
        machine = self._machine()
        record = machine._stored()
        txid = message.reanchor_locked.txid.hex()
        if record.contract_txid == txid:
            return []  # promoted already
        pending = record.pending
        if pending is None or pending.refused or pending.txid != txid:
            raise bad_tx(f"REANCHOR_LOCKED for {txid}, which is not our re-anchor")
        # If confirmed, complete, even if its ACK never reached us (a lost connection): the
        # adapter checks that with our own node before anything moves.
        return [ReanchorLocked(replace(record, pending=replace(pending, complete=True)))]

    def reanchor_confirmed(self, record: ChannelRecord) -> list[Effect]:
        """R confirmed and the stored channel was promoted (`record`), with no server to say
        so (the watcher, no connection): payments from now on are signed on the next
        contract alone."""
        machine = self._machine()
        return machine._input(Input.REANCHOR_CONFIRMED, self._on_reanchor_confirmed, record)

    def _on_reanchor_confirmed(self, record: ChannelRecord) -> list[Effect]:
        machine = self._machine()
        ours = machine._stored()
        if ours.contract_txid == record.contract_txid:
            return []  # promoted already
        if ours.pending is None or ours.pending.txid != record.contract_txid:
            raise LocalProtocolError(f"channel {record.channel_id} has no pending re-anchor "
                                     f"creating {record.contract_txid}")
        # Confirmed, so complete, even if its ACK never reached us (a lost connection).
        machine.record = rules.promoted(replace(ours, pending=replace(ours.pending,
                                                                      complete=True)))
        return []
