"""Reading what JournalHandler sends: the journald native protocol, as systemd-journald
parses it (KEY=value lines, or KEY, a little-endian u64 length and the value)."""
from __future__ import annotations

import struct


def parse_entry(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            out[key.decode()] = value.decode()
            pos = end + 1
        else:  # binary form: KEY\n<u64 length><value>\n
            size = struct.unpack("<Q", data[end + 1:end + 9])[0]
            out[line.decode()] = data[end + 9:end + 9 + size].decode()
            pos = end + 9 + size + 1
    return out
