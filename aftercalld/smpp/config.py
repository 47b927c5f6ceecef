"""The `[transport]` table when `type = "smpp"`: typed, checked, password kept out of reprs."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..configreader import Section
from ..rules.encoding import SegmentingProfile
from .parts import CONCAT_METHODS, WireProfile, parse_tlv_map, segmenting_profile

log = logging.getLogger(__name__)

BIND_MODES = ("transceiver", "transmitter_receiver", "transmitter")
# How the SMSC writes message ids in submit_sm_resp vs receipts (Kannel's msg-id-type):
# "same" reports receipt ids as received and leaves matching to the store's tolerant keys;
# "hex_dec" = hex in submit_sm_resp, decimal in receipts; "dec_hex" the other way round.
# Set it for SMSCs that mix bases: "12" is both a decimal id and another message's hex id.
MSG_ID_TYPES = ("same", "hex_dec", "dec_hex")
# How long a data_coding 1 (IA5) or 3 (Latin-1) text may be: "spec" counts octets against
# the 140 of a message's user data (134/133 per UDH part), safe with any SMSC;
# "transcoding_smsc" counts GSM septets (160, 153/152 per part) for an SMSC that converts
# such texts to GSM 7-bit before they reach the network.
OCTET_LIMITS = ("spec", "transcoding_smsc")


@dataclass(frozen=True)
class SmppSettings:
    hosts: tuple[tuple[str, int], ...]
    system_id: str
    password: str = field(default="", repr=False)
    system_type: str = ""
    bind_mode: str = "transceiver"
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""
    tls: bool = False
    tls_verify: bool = True
    tls_ca_file: str = ""
    sessions: int = 1
    window: int = 10
    session_rate: float = 0.0  # submit_sm per second per session, 0 = unlimited
    account_rate: float = 0.0  # across all sessions of this account
    response_timeout: float = 10.0
    connect_timeout: float = 10.0
    enquire_link_interval: float = 30.0
    enquire_link_timeout: float = 10.0
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    # While no SMSC host even accepts a connection, one is tried this often: a refused or
    # unanswered TCP connect costs the SMSC nothing, and a SMSC that comes back is bound
    # within this long rather than after a backoff grown to reconnect_max.
    probe_interval: float = 2.0
    throttle_pause: float = 1.0
    part_attempts: int = 5
    drain_timeout: float = 10.0
    gsm_data_coding: int = 0
    concatenation: str = "udh8"
    octet_limits: str = "spec"
    source_ton: int | None = None
    source_npi: int | None = None
    dest_ton: int = 1
    dest_npi: int = 1
    registered_delivery: bool = True
    service_type: str = ""
    tlvs: dict[int, bytes] = field(default_factory=dict)
    transient_statuses: frozenset[int] = frozenset()
    msg_id_type: str = "same"

    @property
    def wire_profile(self) -> WireProfile:
        return WireProfile(
            gsm_data_coding=self.gsm_data_coding,
            concatenation=self.concatenation,
            source_ton=self.source_ton,
            source_npi=self.source_npi,
            dest_ton=self.dest_ton,
            dest_npi=self.dest_npi,
            registered_delivery=1 if self.registered_delivery else 0,
            service_type=self.service_type,
            tlvs=dict(self.tlvs),
            octet_limits=self.octet_limits == "spec",
        )

    @property
    def segmenting(self) -> SegmentingProfile:
        """How rendering must count segments so that they are what goes on the wire."""
        return segmenting_profile(self.gsm_data_coding, self.concatenation, self.octet_limits == "spec")


def _parse_host(section: Section, item: str, default_port: int) -> tuple[str, int] | None:
    """(host, port), or None after reporting why not."""
    host, sep, port = item.strip().rpartition(":")
    if not sep or "]" in port:  # no port, or a bare IPv6 address in brackets
        host, port = item.strip(), ""
    host = host.strip("[]")
    if not host:
        section.report("hosts", f'"{item}" has no host name')
        return None
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        section.report("hosts", f'"{item}": port must be 1–65535')
        return None
    return host, int(port)


def _parse_status(section: Section, text: str) -> int | None:
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        section.report("transient_statuses", f'"{text}" is not a number such as "0x0401"')
        return None


def parse_settings(section: Section) -> SmppSettings:
    port = section.int("port", 2775, min=1, max=65535)
    host_entries = section.str_list("hosts")
    if not host_entries:
        raise section.error("hosts", "needs at least one SMSC host")
    hosts = tuple(h for h in (_parse_host(section, item, port) for item in host_entries) if h is not None)
    system_id = section.str("system_id", nonempty=True)
    if len(system_id) > 15:
        section.report("system_id", "at most 15 characters in SMPP 3.4")
    password = section.secret("password", "")
    if len(password) > 8:
        # SMPP 3.4 caps it at 8; some providers issue longer ones and accept them.
        log.warning("%s: longer than the 8 characters SMPP 3.4 allows; sending it whole",
                    section.key("password"))
    system_type = section.str("system_type", "")
    if len(system_type) > 12:
        section.report("system_type", "at most 12 characters in SMPP 3.4")
    address_range = section.str("address_range", "")

    ton_npi = {key: section.int(key, None, min=0, max=255) for key in ("source_ton", "source_npi")}

    tlv_strings = section.str_map("tlvs", {})
    tlvs: dict[int, bytes] = {}
    try:
        tlvs = parse_tlv_map(tlv_strings)
    except ValueError as exc:
        section.report("tlvs", str(exc))

    backoff = section.backoff(1.0, 60.0)
    settings = SmppSettings(
        hosts=hosts,
        system_id=system_id,
        password=password,
        system_type=system_type,
        bind_mode=section.str("bind_mode", "transceiver", choices=BIND_MODES),
        addr_ton=section.int("addr_ton", 0, min=0, max=255),
        addr_npi=section.int("addr_npi", 0, min=0, max=255),
        address_range=address_range,
        tls=section.bool("tls", False),
        tls_verify=section.bool("tls_verify", True),
        tls_ca_file=section.str("tls_ca_file", ""),
        sessions=section.int("sessions", 1, min=1, max=64),
        window=section.int("window", 10, min=1, max=1000),
        session_rate=section.float("session_rate", 0.0, min=0.0),
        account_rate=section.float("account_rate", 0.0, min=0.0),
        response_timeout=section.float("response_timeout", 10.0, min=0.1, max=600.0),
        connect_timeout=section.float("connect_timeout", 10.0, min=0.1, max=600.0),
        enquire_link_interval=section.float("enquire_link_interval", 30.0, min=0.1, max=3600.0),
        enquire_link_timeout=section.float("enquire_link_timeout", 10.0, min=0.1, max=600.0),
        reconnect_min=backoff[0],
        reconnect_max=backoff[1],
        probe_interval=section.float("probe_interval", 2.0, min=0.05, max=600.0),
        throttle_pause=section.float("throttle_pause", 1.0, min=0.0, max=600.0),
        part_attempts=section.int("part_attempts", 5, min=1, max=100),
        drain_timeout=section.float("drain_timeout", 10.0, min=0.0, max=600.0),
        gsm_data_coding=section.int("gsm_data_coding", 0, min=0, max=3),
        concatenation=section.str("concatenation", "udh8", choices=CONCAT_METHODS),
        octet_limits=section.str("octet_limits", "spec", choices=OCTET_LIMITS),
        source_ton=ton_npi["source_ton"],
        source_npi=ton_npi["source_npi"],
        dest_ton=section.int("dest_ton", 1, min=0, max=255),
        dest_npi=section.int("dest_npi", 1, min=0, max=255),
        registered_delivery=section.bool("registered_delivery", True),
        service_type=section.str("service_type", ""),
        tlvs=tlvs,
        msg_id_type=section.str("msg_id_type", "same", choices=MSG_ID_TYPES),
        transient_statuses=frozenset(
            status for status in (_parse_status(section, s) for s in section.str_list("transient_statuses", []))
            if status is not None),
    )
    if settings.gsm_data_coding == 2:
        section.report("gsm_data_coding", "2 is 8-bit binary, not text: use 0, 1 or 3")
    if len(settings.service_type) > 5:
        section.report("service_type", "at most 5 characters in SMPP 3.4")
    section.done()
    return settings
