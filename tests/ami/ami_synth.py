"""Hand-built AMI event sequences shaped like a production PBX (PJSIP trunks and phones,
queues, pickups): the trunk channel's Uniqueid is the Linkedid and there are no Local
channel halves. Field names and orders follow Asterisk 18-22 manager events."""
from __future__ import annotations


class Synth:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start
        self.events: list[tuple[float, dict[str, str]]] = []
        self._chans: dict[str, dict[str, str]] = {}
        self._seq = 0

    def wait(self, seconds: float) -> Synth:
        self.t += seconds
        return self

    def _emit(self, event: str, privilege: str = "call,all", **fields: str) -> None:
        self.t += 0.0001
        self.events.append((self.t, {"Event": event, "Privilege": privilege, **fields}))

    def _chan_fields(self, uid: str) -> dict[str, str]:
        c = self._chans[uid]
        return {"Channel": c["Channel"], "ChannelState": "4", "ChannelStateDesc": c["state"],
                "CallerIDNum": c["cid"], "CallerIDName": c["cidname"],
                "ConnectedLineNum": c["clnum"], "ConnectedLineName": c["clname"],
                "Language": "en", "AccountCode": "", "Context": c["context"],
                "Exten": c["exten"], "Priority": "1", "Uniqueid": uid, "Linkedid": c["lid"]}

    def channel(self, name: str, lid: str | None = None, *, context: str, exten: str,
                cid: str = "", cidname: str = "", state: str = "Ring") -> str:
        self._seq += 1
        uid = f"{int(self.t)}.{self._seq}"
        self._chans[uid] = {"Channel": f"{name}-{self._seq:08x}", "lid": lid or uid,
                            "context": context, "exten": exten, "cid": cid or "<unknown>",
                            "cidname": cidname or "<unknown>", "clnum": "<unknown>",
                            "clname": "<unknown>", "state": state}
        self._emit("Newchannel", **self._chan_fields(uid))
        return uid

    def local(self, name: str, lid: str, *, context: str, exten: str, cid: str = "",
              cidname: str = "") -> tuple[str, str]:
        """A Local channel's two halves (``;1`` joins the bridge, ``;2`` runs the dialplan)."""
        self._seq += 1
        seq = self._seq
        uids = []
        for half in ("1", "2"):
            self._seq += 1
            uid = f"{int(self.t)}.{self._seq}"
            self._chans[uid] = {"Channel": f"{name}-{seq:08x};{half}", "lid": lid, "context": context,
                                "exten": exten, "cid": cid or "<unknown>", "cidname": cidname or "<unknown>",
                                "clnum": "<unknown>", "clname": "<unknown>", "state": "Down"}
            self._emit("Newchannel", **self._chan_fields(uid))
            uids.append(uid)
        self._emit("LocalBridge", **{f"LocalOne{k}": v for k, v in self._chan_fields(uids[0]).items()},
                   **{f"LocalTwo{k}": v for k, v in self._chan_fields(uids[1]).items()},
                   Context=context, Exten=exten, LocalOptimization="Yes")
        return uids[0], uids[1]

    def name(self, uid: str) -> str:
        return self._chans[uid]["Channel"]

    def relink(self, uid: str, lid: str) -> None:
        self._chans[uid]["lid"] = lid

    def connected_line(self, uid: str, num: str, name: str) -> None:
        self._chans[uid]["clnum"], self._chans[uid]["clname"] = num, name
        self._emit("NewConnectedLine", **self._chan_fields(uid))

    def up(self, uid: str) -> None:
        self._chans[uid]["state"] = "Up"
        self._emit("Newstate", **self._chan_fields(uid))

    def app(self, uid: str, app: str, data: str = "") -> None:
        self._emit("Newexten", "dialplan,all", **self._chan_fields(uid), Extension=self._chans[uid]["exten"],
                   Application=app, AppData=data)

    def setvar(self, uid: str, var: str, value: str) -> None:
        self._emit("VarSet", "dialplan,all", **self._chan_fields(uid), Variable=var, Value=value)

    def _dest(self, dest: str) -> dict[str, str]:
        return {f"Dest{k}": v for k, v in self._chan_fields(dest).items()}

    def dial_begin(self, src: str, dest: str, dialstring: str) -> None:
        self._emit("DialBegin", **self._chan_fields(src), **self._dest(dest), DialString=dialstring)

    def dial_end(self, src: str, dest: str, status: str) -> None:
        self._emit("DialEnd", **self._chan_fields(src), **self._dest(dest), DialStatus=status)

    def bridge(self, bid: str, *uids: str) -> None:
        for uid in uids:
            self._emit("BridgeEnter", **self._chan_fields(uid), BridgeUniqueid=bid,
                       BridgeType="basic", BridgeTechnology="simple_bridge",
                       BridgeNumChannels="2")

    def unbridge(self, bid: str, *uids: str) -> None:
        for uid in uids:
            self._emit("BridgeLeave", **self._chan_fields(uid), BridgeUniqueid=bid,
                       BridgeType="basic", BridgeNumChannels="1")

    def hangup(self, uid: str, cause: str = "16") -> None:
        text = {"16": "Normal Clearing", "0": "Unknown", "19": "No user responding",
                "26": "Answered elsewhere"}.get(cause, "x")
        self._emit("Hangup", **self._chan_fields(uid), Cause=cause, **{"Cause-txt": text})

    def soft_hangup(self, uid: str, cause: str) -> None:
        """SoftHangupRequest: Cause is Asterisk's soft-hangup reason (4 = shutdown)."""
        self._emit("SoftHangupRequest", **self._chan_fields(uid), Cause=cause)

    def shutdown(self, restart: bool = True) -> None:
        self._emit("Shutdown", "system,all", Shutdown="Cleanly", Restart="True" if restart else "False")

    def cdr(self, uid: str, dest_uid: str, *, src: str, dst: str, context: str, app: str, data: str,
            start: str, answer: str, end: str, duration: int, billsec: int) -> None:
        c = self._chans[uid]
        self._emit("Cdr", "cdr,all", AccountCode="", Source=src, Destination=dst, DestinationContext=context,
                   CallerID=f'"{c["cidname"]}" <{c["cid"]}>', Channel=c["Channel"],
                   DestinationChannel=self._chans[dest_uid]["Channel"] if dest_uid else "",
                   LastApplication=app, LastData=data, StartTime=start, AnswerTime=answer, EndTime=end,
                   Duration=str(duration), BillableSeconds=str(billsec), Disposition="ANSWERED",
                   AMAFlags="DOCUMENTATION", UniqueID=uid, UserField="")

    def blind_transfer(self, transferer: str, transferee: str, bid: str, exten: str, context: str) -> None:
        self._emit("BlindTransfer", Result="Success",
                   **{f"Transferer{k}": v for k, v in self._chan_fields(transferer).items()},
                   **{f"Transferee{k}": v for k, v in self._chan_fields(transferee).items()},
                   BridgeUniqueid=bid, BridgeType="basic", BridgeTechnology="simple_bridge",
                   BridgeCreator="<unknown>", BridgeName="<unknown>", BridgeNumChannels="2",
                   BridgeVideoSourceMode="none", IsExternal="Yes", Context=context, Extension=exten)

    def agent_called(self, caller: str, member: str, queue: str, member_name: str, interface: str) -> None:
        self._emit("AgentCalled", "agent,all", **self._chan_fields(caller), **self._dest(member),
                   Queue=queue, Interface=interface, MemberName=member_name)

    def write(self, path, title: str, notes: list[str]) -> None:
        """As an ``*.ami`` trace (the format of ``tests/data/traces/asterisk``): ``#`` header
        lines, then per event a ``# ts=`` line and the event's CRLF lines, as Asterisk sends
        them with ``timestampevents = yes`` (a ``Timestamp`` after ``Privilege``)."""
        t0 = self.events[0][0]
        out = [f"# aftercalld AMI trace, WRITTEN (not recorded): {title}",
               *(f"# {line}" for line in notes),
               "# data: per message one '# ts=<epoch> +<seconds>' line, then the message bytes (CRLF lines, "
               "empty-line terminated)"]
        for ts, ev in self.events:
            out.append(f"# ts={ts:.6f} +{ts - t0:.3f}")
            items = list(ev.items())
            out += [f"{k}: {v}" for k, v in items[:2]]
            out.append(f"Timestamp: {ts:.6f}")
            out += [f"{k}: {v}" for k, v in items[2:]]
            out.append("")
        path.write_bytes(("\r\n".join(out) + "\r\n").encode())

    def queue_join(self, uid: str, queue: str) -> None:
        self._emit("QueueCallerJoin", "agent,all", **self._chan_fields(uid), Queue=queue, Position="1", Count="1")

    def agent_connect(self, caller: str, member: str, queue: str, member_name: str,
                      interface: str = "", hold: str = "5", ring: str = "4") -> None:
        self._emit("AgentConnect", "agent,all", **self._chan_fields(caller), **self._dest(member), Queue=queue,
                   MemberName=member_name, Interface=interface or f"PJSIP/{member_name}", HoldTime=hold,
                   RingTime=ring)

    def queue_abandon(self, uid: str, queue: str) -> None:
        self._emit("QueueCallerAbandon", "agent,all", **self._chan_fields(uid), Queue=queue, Position="1",
                   OriginalPosition="1", HoldTime="12")
