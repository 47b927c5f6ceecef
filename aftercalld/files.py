"""The files the package ships for an install: the example config and the systemd units.

They travel inside the wheel (``aftercalld/data/``), so a user who installed with pip has
them without a checkout: `aftercalld files` lists them, `aftercalld files NAME` prints one,
and `aftercalld files --install` puts them where systemd and the README expect them.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

# The unit's ExecStart as shipped; an install rewrites it to the aftercalld being run.
UNIT_EXECUTABLE = "/usr/local/bin/aftercalld"
SERVICE_GROUP = "aftercalld"  # as in systemd/aftercalld.sysusers


@dataclass(frozen=True, slots=True)
class Shipped:
    name: str  # path under aftercalld/data/, and what `aftercalld files NAME` takes
    destination: str  # where --install puts it ("" = nowhere: an example to copy from)
    mode: int
    about: str


SHIPPED: tuple[Shipped, ...] = (
    Shipped("aftercalld.example.toml", "/etc/aftercalld/aftercalld.toml", 0o640,
            "every config key, commented; the start of your own config"),
    Shipped("examples/ami.toml", "", 0o644, "the [[pbx]] keys of an Asterisk AMI connection"),
    Shipped("examples/esl.toml", "", 0o644, "the [[pbx]] keys of a FreeSWITCH event socket"),
    Shipped("examples/smpp.toml", "", 0o644, "the [transport] keys of an SMPP bind"),
    Shipped("examples/modem.toml", "", 0o644, "the [transport] keys of a GSM modem"),
    Shipped("examples/routes.toml", "", 0o644, "several [[transport]] tables and [[route]]s with failover"),
    Shipped("systemd/aftercalld.service", "/etc/systemd/system/aftercalld.service", 0o644,
            "the systemd unit (Type=notify, watchdog, hardening)"),
    Shipped("systemd/aftercalld.sysusers", "/usr/lib/sysusers.d/aftercalld.conf", 0o644,
            "the service user, for systemd-sysusers"),
    Shipped("systemd/aftercalld.tmpfiles", "/usr/lib/tmpfiles.d/aftercalld.conf", 0o644,
            "the config directory, for systemd-tmpfiles"),
    Shipped("systemd/aftercalld.service.d/modem.conf", "/etc/systemd/system/aftercalld.service.d/modem.conf",
            0o644, "drop-in for GSM modem sites: serial device access (install it by name)"),
)

# What `--install` with no names installs: everything but the examples and the modem drop-in.
DEFAULT_INSTALL = ("aftercalld.example.toml", "systemd/aftercalld.service", "systemd/aftercalld.sysusers",
                   "systemd/aftercalld.tmpfiles")


def find(name: str) -> Shipped | None:
    """By its name, or the end of it: `aftercalld.service`, `aftercalld.service.d/modem.conf`."""
    return next((s for s in SHIPPED if s.name == name or s.name.endswith("/" + name)), None)


def data(shipped: Shipped) -> Traversable:
    return resources.files("aftercalld") / "data" / shipped.name


def read_text(shipped: Shipped) -> str:
    return data(shipped).read_text(encoding="utf-8")


def this_executable() -> str:
    """The `aftercalld` script of this install (a virtualenv's, or the system's)."""
    beside = Path(sys.executable).with_name("aftercalld")
    if beside.exists():
        return str(beside)
    return shutil.which("aftercalld") or UNIT_EXECUTABLE


def _give_to_service_group(path: Path) -> None:
    """The config holds the AMI secret and the SMPP password: root owns it, the service's
    group reads it (when that group exists yet, i.e. after systemd-sysusers)."""
    import grp

    try:
        gid = grp.getgrnam(SERVICE_GROUP).gr_gid
    except KeyError:
        return
    if os.geteuid() == 0:
        os.chown(path, 0, gid)


def install(names: list[str], root: Path, *, force: bool = False) -> list[str]:
    """Copy the named files to their destinations under ``root``; returns one line per file
    saying what was done. A config file that exists is never overwritten (it is the site's
    own); other files are replaced only with ``force``."""
    done: list[str] = []
    for name in names or DEFAULT_INSTALL:
        shipped = find(name)
        if shipped is None:
            raise LookupError(f"no shipped file named {name!r} (see `aftercalld files`)")
        if not shipped.destination:
            raise LookupError(f"{shipped.name} is an example to copy from, it has no place to go")
        target = root / shipped.destination.lstrip("/")
        is_config = shipped.destination.startswith("/etc/aftercalld/")
        if target.exists() and (is_config or not force):
            done.append(f"kept {target} (exists{'' if is_config else '; --force replaces it'})")
            continue
        text = read_text(shipped)
        if shipped.name == "systemd/aftercalld.service":
            text = text.replace(UNIT_EXECUTABLE, this_executable())
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".aftercalld-new")
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, shipped.mode)
        if is_config:
            _give_to_service_group(tmp)
        tmp.replace(target)
        done.append(f"installed {target}")
    return done
