"""What the recorded Asterisk traces' README says each recorded call was (the truth the
tracker is tested against), plus where the traces live."""
from __future__ import annotations

from testdata import ASTERISK_TRACES as TRACES  # noqa: F401  (re-exported for the AMI tests)

# One dict per call: every field the README states. talk = the call leg's bridged time
# (BridgeEnter to BridgeLeave), compared to within 50 ms; the README notes where it differs
# from the CDR billsec.
INBOUND_CONNECTED = dict(status="connected", direction="inbound", caller_number="9876543210",
                         caller_name="John Caller", dialled_number="18005550100",
                         agent_extension="201", department="support", talk_seconds=3.5,
                         voicemail_box="", queue="", hangup_cause="NORMAL_CLEARING")
MISSED = dict(status="missed", direction="inbound", caller_number="9876543210",
              dialled_number="18005550101", agent_extension="202", department="sales",
              talk_seconds=0.0, voicemail_box="", hangup_cause="NORMAL_CLEARING")
VOICEMAIL = dict(status="voicemail", direction="inbound", caller_number="9876543210",
                 caller_name="John Caller", dialled_number="18005550104", agent_extension="202",
                 department="support", talk_seconds=0.0, voicemail_box="100@default",
                 hangup_cause="NORMAL_CLEARING")
OUTBOUND = dict(status="connected", direction="outbound", caller_number="201",
                caller_name="Alice Agent", dialled_number="14155550123", agent_extension="201",
                agent_name="Alice Agent", department="", talk_seconds=5.0, voicemail_box="",
                hangup_cause="NORMAL_CLEARING")
IVR = dict(status="missed", direction="inbound", caller_number="9876543210",
           dialled_number="18005550107", agent_extension="", department="", talk_seconds=0.0,
           voicemail_box="", hangup_cause="NORMAL_CLEARING")

# file -> {Linkedid: expected fields}
EXPECTED: dict[str, dict[str, dict]] = {
    "inbound_connected.ami": {"1796012880.0": INBOUND_CONNECTED},
    "inbound_missed_noanswer.ami": {"1796012888.4": MISSED},
    "inbound_voicemail.ami": {"1796012895.8": VOICEMAIL},
    "outbound_connected.ami": {"1796012927.12": OUTBOUND},
    "ivr_abandon.ami": {"1796012938.16": IVR},
    "mixed_concurrent.ami": {
        "1796012946.18": VOICEMAIL,
        "1796012947.22": INBOUND_CONNECTED,
        "1796012947.26": {**MISSED, "caller_number": "4155550111", "caller_name": "Ann Other"},
        "1796012948.30": {**IVR, "caller_number": "+12125550147"},
        "1796012948.32": OUTBOUND,
        "1796012949.36": {**INBOUND_CONNECTED, "caller_number": "9123456780",
                          "caller_name": "Second Caller"},
    },
}

# Department variables and account codes the README lists, per Linkedid.
ACCOUNTCODES = {
    "1796012880.0": "ACME-SUPPORT", "1796012888.4": "ACME-SALES", "1796012927.12": "ACME-OUT",
    "1796012947.22": "ACME-SUPPORT", "1796012947.26": "ACME-SALES", "1796012948.32": "ACME-OUT",
    "1796012949.36": "ACME-SUPPORT",
}


def check_record(record, expected: dict) -> None:
    got = record.to_dict()
    wrong = {k: (got[k], v) for k, v in expected.items()
             if (got[k] != v if k != "talk_seconds" else abs(got[k] - v) > 0.05)}
    assert not wrong, f"{record.call_id}: (got, expected) {wrong}"
