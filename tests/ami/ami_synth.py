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

    def _emit(self, event: str, **fields: str) -> None:
        self.t += 0.0001
        self.events.append((self.t, {"Event": event, "Privilege": "call,all", **fields}))

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
        self._emit("Newexten", **self._chan_fields(uid), Extension=self._chans[uid]["exten"],
                   Application=app, AppData=data)

    def setvar(self, uid: str, var: str, value: str) -> None:
        self._emit("VarSet", **self._chan_fields(uid), Variable=var, Value=value)

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
        self._emit("Hangup", **self._chan_fields(uid), Cause=cause, **{"Cause-txt": "x"})

    def queue_join(self, uid: str, queue: str) -> None:
        self._emit("QueueCallerJoin", **self._chan_fields(uid), Queue=queue, Position="1", Count="1")

    def agent_connect(self, caller: str, member: str, queue: str, member_name: str) -> None:
        self._emit("AgentConnect", **self._chan_fields(caller), **self._dest(member), Queue=queue,
                   MemberName=member_name, Interface=f"PJSIP/{member_name}", HoldTime="5",
                   RingTime="4")

    def queue_abandon(self, uid: str, queue: str) -> None:
        self._emit("QueueCallerAbandon", **self._chan_fields(uid), Queue=queue, Position="1",
                   OriginalPosition="1", HoldTime="12")
