"""Extensions out of Asterisk channel names, dial strings and queue interfaces.

Shapes handled (technology names are case-insensitive):

* channel names: ``PJSIP/201-0000002a``, ``SIP/201-00000002``, ``IAX2/201-12345``,
  ``Local/201@from-queue-00000001;1`` (``;1``/``;2`` are the two halves), ``DAHDI/1-1``
  (a DAHDI channel number is not an extension: empty);
* dial strings and interfaces, with or without the technology (``DialBegin`` leaves it out
  for ``Dial()`` but keeps it for queue members): ``Local/201@from-queue/n`` (options after
  the second ``/``), ``201@agents``, ``PJSIP/201``, ``PJSIP/trunk/sip:0123@host``,
  ``SIP/trunk/0123``, ``SIP/0123@trunk``, ``IAX2/user:secret@peer/1234@ctx``,
  ``DAHDI/g1/0123``; ``&`` alternatives and ``,`` Dial() arguments are cut off.
"""
from __future__ import annotations

_TECHS = frozenset({"local", "pjsip", "sip", "iax2", "dahdi", "iax", "h323", "ooh323", "motif",
                    "unistim", "skinny", "mgcp", "console", "multicast", "websocket", "audiosocket"})


def _tech(text: str) -> tuple[str, str]:
    """(lower-case technology or "", the rest)."""
    head, sep, rest = text.partition("/")
    if sep and head.lower() in _TECHS:
        return head.lower(), rest
    return "", text


def _user(uri_or_ext: str) -> str:
    """``sip:0123@host`` → 0123; ``0123@ctx`` → 0123; ``user:secret@peer`` is not ours."""
    value = uri_or_ext
    for scheme in ("sip:", "sips:", "tel:"):
        if value.startswith(scheme):
            value = value[len(scheme):]
            break
    return value.split("@", 1)[0].split(";", 1)[0]


def extension_from_channel(name: str) -> str:
    """The extension a channel name carries, "" when it carries none."""
    tech, rest = _tech(name)
    if not tech:
        return ""
    if rest.endswith((";1", ";2")):
        rest = rest[:-2]
    if tech == "local":
        return rest.split("@", 1)[0]
    if tech == "dahdi":
        return ""
    # The technology's own sequence number follows the last "-" (PJSIP/201-0000002a).
    return rest.rsplit("-", 1)[0] if "-" in rest else rest


def extension_from_dialstring(dialstring: str, tech: str = "") -> str:
    """The extension a dial string or queue interface dials; ``tech`` is the technology when
    the string leaves it out (take it from the dialled channel's name)."""
    first = dialstring.split("&", 1)[0].split(",", 1)[0].strip()
    found, rest = _tech(first)
    tech = found or tech.lower()
    parts = rest.split("/")
    if tech == "local":
        return parts[0].split("@", 1)[0]  # exten@context, then /n, /j options
    if tech == "iax2" or tech == "iax":
        # [user[:secret]@]peer[:port][/exten[@context]][/options]
        return _user(parts[1]) if len(parts) > 1 and parts[1] else parts[0].rsplit("@", 1)[-1].split(":", 1)[0]
    if tech == "dahdi":
        # group or channel, then the number: g1/0123, 1/0123, r2/0123
        return _user(parts[1]) if len(parts) > 1 else ""
    # PJSIP/endpoint[/uri], SIP/peer[/exten], SIP/exten@peer, and tech-less "201@agents".
    if len(parts) > 1 and parts[1]:
        return _user(parts[1])
    return _user(parts[0])


def extension(channel: str, dialstring: str = "", is_extension=None) -> str:
    """The agent's extension of a dialled or bridged channel: the channel's own name first,
    when it looks like an extension; else what the dial string dialled (a trunk channel is
    named after the trunk, the number it dialled is in the dial string)."""
    own = extension_from_channel(channel)
    if own and (is_extension is None or is_extension(own)):
        return own
    dialled = extension_from_dialstring(dialstring, _tech(channel)[0]) if dialstring else ""
    return dialled or own
