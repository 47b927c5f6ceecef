"""What the AMI tracker keeps per call and channel, and how a finished call becomes the
protocol-neutral `CallFacts` that `aftercalld.classify` turns into a record.

Talk time is followed here as it happens: the call leg's bridges are watched, and every
change of who is bridged with it (someone enters, leaves, a transfer swaps the agent) closes
one stretch and opens the next, on the PBX's own BridgeEnter/BridgeLeave timestamps.
"""
from __future__ import annotations

from ..classify import CallFacts, Talk, merge_variables
from . import dialstring
from .causes import cause_name


def voicemail_box(appdata: str) -> str:
    """The first mailbox of a ``VoiceMail()`` application's data, with its context."""
    box = appdata.split(",", 1)[0].split("&", 1)[0].strip()
    return box if not box or "@" in box else f"{box}@default"


class Chan:
    __slots__ = ("uid", "name", "call", "hung", "context", "exten", "cid_num", "cid_name",
                 "cl_num", "cl_name", "account", "vars", "cause", "up_at", "ran_vm")

    def __init__(self, uid: str, name: str, call: Call) -> None:
        self.uid = uid
        self.name = name
        self.call: Call = call
        self.hung = False
        self.context = ""
        self.exten = ""
        self.cid_num = ""
        self.cid_name = ""
        self.cl_num = ""
        self.cl_name = ""
        self.account = ""
        self.vars: dict[str, str] | None = None
        self.cause = ""
        self.up_at = 0.0
        self.ran_vm = False


class Dial:
    __slots__ = ("src", "dest", "dialstring", "status", "end")

    def __init__(self, src: str, dest: str, dialstring: str) -> None:
        self.src = src
        self.dest = dest
        self.dialstring = dialstring
        self.status = ""
        self.end = 0.0


class Call:
    __slots__ = ("linkedid", "start", "seen", "end", "channels", "by_name", "live", "partial",
                 "main", "dials", "bridges", "talk_peer", "talk_from", "stretches", "vm_box",
                 "vm_ran", "vm_status", "vm_waiting", "queue", "member_names", "shutdown")

    def __init__(self, linkedid: str, start: float, partial: bool, seen: float) -> None:
        self.linkedid = linkedid
        self.start = start  # the PBX's clock (the event's Timestamp): what the record says
        self.seen = seen  # our clock when the first event arrived: what eviction counts from
        self.end = start
        self.channels: dict[str, Chan] = {}
        self.by_name: dict[str, Chan] = {}
        self.live = 0
        self.partial = partial
        self.main: Chan | None = None
        self.dials: list[Dial] = []
        self.bridges: dict[str, list[str]] | None = None
        self.talk_peer = ""  # uid the call leg is bridged with now ("" = none)
        self.talk_from = 0.0
        self.stretches: list[tuple[str, float, float]] = []  # (peer uid, from, to)
        self.vm_box = ""
        self.vm_ran = False
        self.vm_status = ""
        self.vm_waiting = False
        self.queue = ""
        self.member_names: dict[str, str] | None = None  # queue member's uid -> MemberName
        self.shutdown = False

    # ------------------------------------------------------------------ structure

    def main_leg(self) -> Chan | None:
        """The ``Linkedid`` channel; for a ``Local/...;1`` one, its ``;2`` half (it runs the
        dialplan). Cached once the ``;2`` half is known."""
        if self.main is not None:
            return self.main
        chan = self.channels.get(self.linkedid)
        if chan is None:
            return None
        if chan.name.startswith("Local/") and chan.name.endswith(";1"):
            partner = self.by_name.get(chan.name[:-1] + "2")
            if partner is None:
                return chan  # not cached: the ;2 half may not have appeared yet
            chan = partner
        self.main = chan
        return chan

    def local_partner(self, chan: Chan) -> Chan | None:
        name = chan.name
        if name.startswith("Local/") and name.endswith((";1", ";2")):
            return self.by_name.get(name[:-1] + ("2" if name[-1] == "1" else "1"))
        return None

    def release(self) -> None:
        """Break the call <-> channel reference cycles once the call is forgotten, so plain
        reference counting frees it (a full GC pass may be far away)."""
        for chan in self.channels.values():
            chan.call = None  # type: ignore[assignment]
        self.channels = {}
        self.by_name = {}
        self.main = None

    def cut(self, end: float) -> None:
        """Its end was not seen: every channel still up counts as hung up at ``end``."""
        for chan in self.channels.values():
            if not chan.hung:
                chan.hung = True
                self.leave_all_bridges(chan.uid, end)
        self.live = 0
        self.end = max(self.end, end)

    # ------------------------------------------------------------------ bridges and talk

    def bridge_enter(self, uid: str, bid: str, ts: float) -> None:
        if self.bridges is None:
            self.bridges = {}
        members = self.bridges.setdefault(bid, [])
        if uid not in members:
            members.append(uid)
        self.retalk(ts)

    def bridge_leave(self, uid: str, bid: str, ts: float) -> None:
        members = self.bridges.get(bid) if self.bridges else None
        if members is None:
            return
        if uid in members:
            members.remove(uid)
        if not members:
            del self.bridges[bid]  # type: ignore[union-attr]
        self.retalk(ts)

    def leave_all_bridges(self, uid: str, ts: float) -> None:
        if self.bridges:
            for bid in [b for b, members in self.bridges.items() if uid in members]:
                self.bridge_leave(uid, bid, ts)

    def retalk(self, ts: float) -> None:
        """Who the call leg is bridged with changed (or may have): close the open stretch,
        open the next one."""
        main = self.main_leg()
        peer = ""
        if main is not None and self.bridges and not main.hung:
            for members in self.bridges.values():
                if main.uid in members and len(members) > 1:
                    # Several others (a conference, a transfer's overlap): the latest to join.
                    peer = next(u for u in reversed(members) if u != main.uid)
                    break
        if peer == self.talk_peer:
            return
        if self.talk_peer:
            self.stretches.append((self.talk_peer, self.talk_from, ts))
        self.talk_peer = peer
        self.talk_from = ts

    # ------------------------------------------------------------------ facts

    def _is_voicemail(self, chan: Chan) -> bool:
        partner = self.local_partner(chan)
        return chan.ran_vm or (partner is not None and partner.ran_vm)

    def _talks(self, main: Chan, is_extension) -> list[Talk]:
        if self.talk_peer:  # still bridged at the last hangup (events cut short)
            self.stretches.append((self.talk_peer, self.talk_from, self.end))
            self.talk_peer = ""
        names = self.member_names or {}
        talks: list[Talk] = []
        for uid, start, end in self.stretches:
            peer = self.channels.get(uid)
            if peer is None:
                talks.append(Talk("", names.get(uid, ""), start, end))
                continue
            if self._is_voicemail(peer):
                continue  # bridged to a voicemail leg, not a person
            if peer.name.startswith("Local/"):
                # A Local channel in the bridge is a person only once its far half answered
                # (a blind transfer bridges the caller with a Local that is still ringing).
                if not peer.up_at or peer.up_at >= end:
                    continue
                start = max(start, peer.up_at)
            elif peer.up_at:
                start = min(max(start, peer.up_at), end)
            ext = dialstring.extension(peer.name, self._dialstring_to(uid), is_extension)
            name = names.get(uid, "")
            if not name and ext and main.cl_num == ext:
                name = main.cl_name
            talks.append(Talk(ext, name, start, end))
        return talks

    def _dialstring_to(self, uid: str) -> str:
        return next((d.dialstring for d in self.dials if d.dest == uid), "")

    def facts(self, pbx: str, is_extension, dept_var: str, wanted_vars: frozenset[str],
              account_var: str) -> CallFacts:
        main = self.main_leg() or next(iter(self.channels.values()))
        names = self.member_names or {}
        rung: list[tuple[str, str]] = []
        ring_end = 0.0
        for dial in self.dials:
            if dial.src != main.uid:
                continue
            dest = self.channels.get(dial.dest)
            ext = dialstring.extension(dest.name if dest else "", dial.dialstring, is_extension)
            rung.append((ext, names.get(dial.dest, "")))
            ring_end = max(ring_end, dial.end)
        if not ring_end:
            ring_end = main.up_at  # the PBX answered itself (IVR, voicemail) without dialling
        vm_left = self.vm_ran and (self.vm_status == "SUCCESS" or (not self.vm_status and self.vm_waiting))

        ordered = [main] + [c for c in self.channels.values() if c is not main]
        per_leg = [c.vars for c in ordered]
        variables = merge_variables(per_leg, wanted_vars)
        if account_var and account_var not in variables and main.account:
            variables[account_var] = main.account
        department = merge_variables(per_leg, (dept_var,)).get(dept_var, "") if dept_var else ""
        return CallFacts(
            call_id=self.linkedid,
            pbx=pbx,
            start=self.start,
            end=self.end,
            caller_number=main.cid_num,
            caller_name=main.cid_name,
            dialled_number=main.exten if main.exten != "s" else "",
            context=main.context,
            talks=self._talks(main, is_extension),
            rung=rung,
            ring_end=ring_end,
            voicemail_reached=self.vm_ran,
            voicemail_left=vm_left,
            voicemail_box=self.vm_box,
            interrupted=self.shutdown,
            hangup_cause=cause_name(main.cause),
            queue=self.queue,
            department=department,
            variables=variables,
        )

