"""What the ESL tracker keeps per channel (leg), and how a finished call's legs become the
protocol-neutral `CallFacts` that `aftercalld.classify` turns into a record.

The *call leg* (what a PBX admin calls "the call") is the channel that ran the routing
dialplan: the one carrying the configured direction variable (FusionPBX's ``call_direction``),
else the first inbound channel that no other channel originated, else the first channel.

Talk time comes from the call leg's bridges as FreeSWITCH timestamps them: each
CHANNEL_BRIDGE opens a stretch with the other leg, CHANNEL_UNBRIDGE (or the hangup of either
leg) closes it; a transfer gives one stretch per agent. Not used, because they mislead:
``billsec`` (an IVR or voicemail answer makes it > 0), ``Answer-State`` (always ``hangup`` at
the end), and the call leg's ``Hangup-Cause`` for the class (NORMAL_CLEARING after an
unanswered bridge when the dialplan goes on).
"""
from __future__ import annotations

from collections.abc import Iterable

from ..classify import CallFacts, Talk
from ..model import Direction

# FreeSWITCH's stand-in names for a leg it originated; they say nothing about the person.
_PLACEHOLDER_NAMES = frozenset({"", "Outbound Call", "Unknown", "unknown", "UNKNOWN"})
_QUEUE_VARIABLES = ("variable_cc_queue", "variable_fifo_name")
# Hangup causes of FreeSWITCH ending calls itself: `shutdown`/`fsctl shutdown` hang every
# channel up with SYSTEM_SHUTDOWN, `hupall`/`fsctl shutdown` (and uuid_kill) with MANAGER_REQUEST.
SHUTDOWN_CAUSES = frozenset({"SYSTEM_SHUTDOWN", "MANAGER_REQUEST"})

DIRECTIONS = {
    "inbound": Direction.INBOUND, "in": Direction.INBOUND,
    "outbound": Direction.OUTBOUND, "out": Direction.OUTBOUND,
    "local": Direction.INTERNAL, "internal": Direction.INTERNAL,
}


def us(value: str | None) -> int:
    """A FreeSWITCH microsecond timestamp; 0 when absent or malformed."""
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        return 0


class Leg:
    __slots__ = ("uuid", "seq", "created_us", "direction", "context", "dest", "cid_num", "cid_name",
                 "parent", "answered_us", "bridged_us", "bridged_to", "final", "vm_box", "stretches")

    def __init__(self, uuid: str, seq: int, event: dict[str, str]) -> None:
        self.uuid = uuid
        self.seq = seq
        # The first event's caller profile is the one the call arrived with: later ones are
        # rewritten by transfers (an IVR's transfer changes Caller-Destination-Number).
        self.created_us = us(event.get("Caller-Channel-Created-Time")) or us(event.get("Event-Date-Timestamp"))
        self.direction = event.get("Call-Direction", "")
        self.context = event.get("Caller-Context", "")
        self.dest = event.get("Caller-Destination-Number", "")
        self.cid_num = event.get("Caller-Caller-ID-Number", "")
        self.cid_name = event.get("Caller-Caller-ID-Name", "")
        self.parent = ""
        self.answered_us = 0
        self.bridged_us = 0
        self.bridged_to = ""
        self.final: dict[str, str] | None = None  # its CHANNEL_HANGUP_COMPLETE
        self.vm_box = ""
        self.stretches: list[list] | None = None  # [peer uuid, from us, to us (0: open)]

    def bridge(self, peer: str, when: int) -> None:
        if self.stretches is None:
            self.stretches = []
        elif self.stretches:
            last = self.stretches[-1]
            if not last[2]:
                if last[0] == peer:
                    return  # the same bridge reported from the other side
                last[2] = when
        self.stretches.append([peer, when, 0])

    def unbridge(self, when: int) -> None:
        if self.stretches and not self.stretches[-1][2]:
            self.stretches[-1][2] = when

    def hangup_us(self) -> int:
        fin = self.final or {}
        return us(fin.get("Caller-Channel-Hangup-Time")) or us(fin.get("variable_end_uepoch"))


def on_bridge_event(legs: dict[str, Leg], leg: Leg, name: str, ev: dict[str, str]) -> None:
    """CHANNEL_BRIDGE / CHANNEL_UNBRIDGE: both legs open or close a stretch with each other."""
    when = us(ev.get("Event-Date-Timestamp"))
    other_uuid = ev.get("Other-Leg-Unique-ID", "")
    other = legs.get(other_uuid)
    if name == "CHANNEL_UNBRIDGE":
        leg.unbridge(when)
        if other is not None:
            other.unbridge(when)
        return
    leg.bridged_us = leg.bridged_us or when
    leg.bridged_to = leg.bridged_to or other_uuid
    if other_uuid:
        leg.bridge(other_uuid, when)
    if other is not None:
        other.bridged_us = other.bridged_us or when
        other.bridged_to = other.bridged_to or leg.uuid
        other.bridge(leg.uuid, when)


def call_leg(legs: Iterable[Leg], direction_var: str) -> Leg:
    ordered = sorted(legs, key=lambda leg: leg.seq)
    if direction_var:
        for leg in ordered:
            if leg.final is not None and leg.final.get(direction_var):
                return leg
    for leg in ordered:
        if leg.direction == "inbound" and not leg.parent:
            return leg
    return ordered[0]


def voicemail(leg: Leg) -> tuple[str, bool, bool]:
    """(mailbox, reached, message left) for one leg.

    Left: mod_voicemail's leave-message event, or the ``voicemail_message_len`` it sets on
    saving. Reached: that, or the account it sets when it starts, or the voicemail app still
    running at hangup (``voicemail check ...`` is someone reading their mailbox: neither)."""
    fin = leg.final or {}
    account = fin.get("variable_voicemail_account", "")
    domain = fin.get("variable_voicemail_domain", "") if account else ""
    box = f"{account}@{domain}" if domain else account
    left = bool(leg.vm_box) or bool(fin.get("variable_voicemail_message_len"))
    reached = left or bool(account)
    if fin.get("variable_last_app") == "voicemail":
        args = fin.get("variable_last_arg", "").split()
        if not (args and args[0] == "check"):
            reached = True
            if not box and len(args) >= 3:  # voicemail <profile> <domain> <id>
                box = f"{args[2]}@{args[1]}"
    box = leg.vm_box or box or ("voicemail" if reached else "")
    return box, reached, left


def originated_legs(value: str) -> list[str]:
    """``variable_originated_legs``: ``uuid;name;number`` items, as an ``ARRAY::a|:b`` when
    the call leg dialled more than once."""
    items = value[7:].split("|:") if value.startswith("ARRAY::") else [value]
    return [item.split(";", 1)[0] for item in items if item]


def first_var(legs: Iterable[Leg], header: str) -> str:
    for leg in legs:
        if leg.final is not None:
            value = leg.final.get(header)
            if value:
                return value
    return ""


def _agent_of(leg: Leg, main_final: dict[str, str]) -> tuple[str, str]:
    ext = leg.dest.split("@", 1)[0]
    if main_final.get("Caller-Callee-ID-Number") == ext:
        callee = main_final.get("Caller-Callee-ID-Name", "")
    else:
        callee = (leg.final or {}).get("Caller-Callee-ID-Name", "")
    return ext, ("" if callee in _PLACEHOLDER_NAMES or callee == ext else callee)


class FactsReader:
    """Turns one call's legs into `CallFacts`; built once per tracker from its settings."""

    def __init__(self, pbx: str, direction_var: str, agent_var: str, department_var: str,
                 wanted_vars: tuple[tuple[str, str], ...]) -> None:
        self.pbx = pbx
        self.direction_var = direction_var
        self.agent_var = agent_var
        self.department_var = department_var
        self.wanted_vars = wanted_vars

    def facts(self, legs_by_uuid: dict[str, Leg]) -> CallFacts:
        legs = sorted(legs_by_uuid.values(), key=lambda leg: leg.seq)
        main = call_leg(legs, self.direction_var)
        fin = main.final or {}
        others = [leg for leg in legs if leg is not main]
        by_main_first = [main, *others]

        # Legs FreeSWITCH dialled for the call leg (agents, carrier) and the one it talked to.
        children = [leg for leg in others if leg.parent == main.uuid]
        bridged_uuid = fin.get("variable_last_bridge_to") or fin.get("variable_bridge_uuid") or main.bridged_to
        bridged = legs_by_uuid.get(bridged_uuid) if bridged_uuid else None
        if bridged is not None and bridged not in children:
            children.append(bridged)

        vm = {leg.uuid: voicemail(leg) for leg in (main, *children)}
        vm_box = next((v[0] for v in vm.values() if v[0]), "") or next((leg.vm_box for leg in others if leg.vm_box), "")
        vm_left = any(v[2] for v in vm.values()) or any(leg.vm_box for leg in others)
        vm_reached = vm_left or any(v[1] for v in vm.values())

        start_us = main.created_us or us(fin.get("variable_start_uepoch"))
        main_end = main.hangup_us() or us(fin.get("Event-Date-Timestamp"))
        child_ends = [t for t in (leg.hangup_us() for leg in children) if t]
        end_us = max([main_end, *child_ends])
        talks = self._talks(main, fin, legs_by_uuid, vm, bridged, main_end)

        rung = [_agent_of(leg, fin) for leg in children]
        answered = us(fin.get("variable_answer_uepoch")) or us(fin.get("Caller-Channel-Answered-Time")) \
            or main.answered_us
        ring_end = max(child_ends) if child_ends else answered

        direction = DIRECTIONS.get(fin.get(self.direction_var, "").strip().lower()) if self.direction_var else None
        cause = fin.get("Hangup-Cause") or fin.get("variable_hangup_cause", "")
        interrupted = cause in SHUTDOWN_CAUSES  # a shutdown hangs every leg up, the call leg too
        agent = first_var(by_main_first, self.agent_var).split("@", 1)[0] if self.agent_var else ""
        queue = next((fin[h] for h in _QUEUE_VARIABLES if fin.get(h)), "")
        variables = {name: value for name, header in self.wanted_vars if (value := first_var(by_main_first, header))}
        return CallFacts(
            call_id=main.uuid,
            pbx=self.pbx,
            start=start_us / 1e6,
            end=end_us / 1e6,
            caller_number=main.cid_num or fin.get("Caller-Caller-ID-Number", ""),
            caller_name=main.cid_name or fin.get("Caller-Caller-ID-Name", ""),
            dialled_number=main.dest or fin.get("Caller-Destination-Number", ""),
            context=main.context,
            direction_hint=direction,
            placed_by_pbx=main.direction == "outbound",
            talks=talks,
            rung=rung,
            ring_end=ring_end / 1e6,
            voicemail_reached=vm_reached,
            voicemail_left=vm_left,
            voicemail_box=vm_box,
            interrupted=interrupted,
            agent_override=agent,
            hangup_cause=cause,
            queue=queue,
            department=first_var(by_main_first, self.department_var) if self.department_var else "",
            variables=variables,
        )

    @staticmethod
    def _talks(main: Leg, fin: dict[str, str], legs: dict[str, Leg], vm: dict, bridged: Leg | None,
               main_end: int) -> list[Talk]:
        stretches = main.stretches or []
        if not stretches:
            # The bridge events were not seen (joined mid-call, a gap): the variables
            # FreeSWITCH leaves on the call leg still say when it was bridged and with whom.
            bridge_us = us(fin.get("variable_bridge_uepoch")) or us(fin.get("Caller-Channel-Bridged-Time")) \
                or main.bridged_us
            peer_uuid = bridged.uuid if bridged is not None else (
                fin.get("variable_last_bridge_to") or fin.get("variable_bridge_uuid") or fin.get("Other-Leg-Unique-ID"))
            if bridge_us and peer_uuid:
                stretches = [[peer_uuid, bridge_us, 0]]
        talks = []
        for peer_uuid, start, end in stretches:
            peer = legs.get(peer_uuid)
            if peer is not None and (vm.get(peer_uuid) or voicemail(peer))[1]:
                continue  # bridged to a voicemail leg, not a person
            if not end:
                ends = [t for t in (main_end, peer.hangup_us() if peer else 0) if t]
                end = min(ends) if ends else start
            ext, name = _agent_of(peer, fin) if peer is not None else ("", "")
            talks.append(Talk(ext, name, start / 1e6, max(start, end) / 1e6))
        return talks
