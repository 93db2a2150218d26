"""``mpproxy gateway --check`` and ``mpproxy node --check``: is this host ready to run it?

A process that starts on a host missing a prerequisite stops with one error, the first
it meets; an operator setting up a vehicle wants the whole list at once, before the
first start, and each item with what to do about it. The checks read the host and change
nothing: :func:`check_gateway` and :func:`check_node` take the configuration and a
:class:`Host` (the facts, read from the live system; tests hand in a fake one) and return
one :class:`Problem` per thing to fix. What they look at:

* the gateway: ``ip`` and ``nft`` installed; the capabilities it needs (CAP_NET_ADMIN for
  links, routes, rules and nftables; CAP_NET_RAW for the AF_PACKET capture and device
  binding; CAP_SYS_ADMIN to create and enter the listener namespace); nftables, veth,
  AF_PACKET and each carrier's congestion control available in the kernel; the LAN
  interface; no listener namespace left over and the listener's routing table free; per
  carrier the interface (present, up, with an IPv4 address, the configured one if given)
  and **source routing**: traffic from the carrier's address to the node leaves through
  the carrier's interface (``ip rule from ADDR lookup TABLE`` with a default route over
  the modem in TABLE); the node's name resolves;
* the node: the listen address can be bound (free, a port below 1024 needs
  CAP_NET_BIND_SERVICE); congestion control BBR available and allowed for a process
  without CAP_NET_ADMIN (``net.ipv4.tcp_allowed_congestion_control``); the gateway lists
  readable;
* both: the configuration (loaded by the caller), the certificate files (readable, a
  certificate and its key, signed by the CA, valid now and for :data:`EXPIRY_WARNING_DAYS`
  more days, on the gateway naming ``gateway.id``), the context source's programs and
  files, the context database's directory, the control socket's directory.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from middlebox.config import Config
from middlebox.errors import UserError

EXPIRY_WARNING_DAYS = 30
# Linux capability numbers (linux/capability.h)
CAPABILITIES = {"net_bind_service": 10, "net_admin": 12, "net_raw": 13, "sys_admin": 21}
GATEWAY_NEEDS = {
    "net_admin": "links, addresses, routes, rules and nftables",
    "net_raw": "the AF_PACKET capture",
    "sys_admin": "creating and entering the listener namespace",
}


@dataclass(frozen=True)
class Problem:
    """One thing to fix (``warning``: worth knowing, does not stop the process)."""

    what: str
    fix: str
    warning: bool = False

    def line(self) -> str:
        return f"{'warning' if self.warning else 'problem'}: {self.what}: {self.fix}"


@dataclass(frozen=True)
class Link:
    up: bool
    addresses: tuple[str, ...]  # IPv4


class Host:
    """The facts the checks read, from the live system (this network namespace)."""

    def capabilities(self) -> set[str]:
        """Effective capabilities of this process, by the names of :data:`CAPABILITIES`."""
        try:
            text = Path("/proc/self/status").read_text()
        except OSError:
            return set()
        eff = next((ln.split()[1] for ln in text.splitlines() if ln.startswith("CapEff:")), "0")
        bits = int(eff, 16)
        return {name for name, bit in CAPABILITIES.items() if bits >> bit & 1}

    def which(self, program: str) -> str | None:
        return shutil.which(program)

    def link(self, name: str) -> Link | None:
        from netns import plumbing
        from netns.errors import PlumbingError

        try:
            with plumbing.ns(None) as ipr:
                idx = ipr.link_lookup(ifname=name)
                if not idx:
                    return None
                (msg,) = ipr.get_links(idx[0])
                addrs = ipr.get_addr(family=socket.AF_INET, index=idx[0])
                return Link(
                    bool(msg["flags"] & 1),  # IFF_UP
                    tuple(a.get_attr("IFA_ADDRESS") for a in addrs),
                )
        except (PlumbingError, OSError, ValueError):
            return None

    def route_out(self, src: str, dst: str) -> str:
        """The interface a packet from ``src`` to ``dst`` leaves by (``ip route get DST
        from SRC``), or the kernel's reason it cannot leave, prefixed with '!'."""
        from pyroute2.netlink.exceptions import NetlinkError

        from netns import plumbing

        try:
            with plumbing.ns(None) as ipr:
                (msg,) = ipr.route("get", dst=dst, src=src)
                oif = msg.get_attr("RTA_OIF")
                (link,) = ipr.get_links(oif)
                return link.get_attr("IFLA_IFNAME")
        except NetlinkError as e:
            return "!" + os.strerror(e.code)
        except (OSError, ValueError) as e:
            return f"!{e}"

    def table_routes(self, table: int) -> int:
        from netns import plumbing

        try:
            with plumbing.ns(None) as ipr:
                routes = ipr.get_routes(family=socket.AF_INET, table=table)
                return sum(1 for r in routes if r.get_attr("RTA_TABLE") == table)
        except OSError:
            return 0

    def resolve(self, host: str) -> list[str]:
        try:
            infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return []
        return sorted({i[4][0] for i in infos})

    def netns_exists(self, name: str) -> bool:
        from netns import plumbing

        return plumbing.exists(name)

    def congestion(self) -> tuple[set[str], set[str]]:
        """(available, allowed without CAP_NET_ADMIN) congestion controls."""
        base = Path("/proc/sys/net/ipv4")
        try:
            avail = set((base / "tcp_available_congestion_control").read_text().split())
            allowed = set((base / "tcp_allowed_congestion_control").read_text().split())
        except OSError:
            return set(), set()
        return avail, allowed

    def module(self, name: str) -> bool | None:
        """The kernel module is loaded, built in, or installed to be loaded; None when
        this cannot be told (no module lists: a kernel built without modules, a
        container)."""
        if Path("/sys/module", name).exists():
            return True
        mods = Path("/lib/modules", os.uname().release)
        try:
            builtin = (mods / "modules.builtin").read_text()
            listed = (mods / "modules.dep").read_text()
        except OSError:
            return None
        return any(f"/{name}.ko" in text for text in (builtin, listed))

    def nft_error(self) -> str | None:
        """Why ``nft list tables`` fails, or None."""
        try:
            proc = subprocess.run(
                ["nft", "list", "tables"], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return str(e)
        return None if proc.returncode == 0 else (proc.stderr.strip() or "failed")

    def packet_error(self) -> str | None:
        """Why an AF_PACKET socket cannot be opened, or None."""
        try:
            socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
        except OSError as e:
            return e.strerror or str(e)
        return None

    def read_error(self, path: str) -> str | None:
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as e:
            return e.strerror or str(e)
        return None

    def dir_error(self, path: str) -> str | None:
        """Why files cannot be created in ``path`` (the nearest existing parent counts:
        the process creates missing directories)."""
        p = Path(path)
        while not p.exists() and p != p.parent:
            p = p.parent
        if not p.is_dir():
            return f"{p} is not a directory"
        return None if os.access(p, os.W_OK | os.X_OK) else f"{p} is not writable"

    def bind_error(self, host: str, port: int) -> str | None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
        except OSError as e:
            return e.strerror or str(e)
        return None

    def now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)


# -- the checks -------------------------------------------------------------------------


def check_gateway(cfg: Config, host: Host) -> list[Problem]:
    """Everything the gateway needs of this host; see the module text."""
    gw = cfg.gateway
    out: list[Problem] = []
    out += _config(cfg, "gateway")
    for prog, pkg in (("ip", "iproute2"), ("nft", "nftables")):
        if host.which(prog) is None:
            out.append(Problem(f"program {prog}", f"not installed: apt-get install {pkg}"))
    caps = host.capabilities()
    for cap, why in GATEWAY_NEEDS.items():
        if cap not in caps:
            out.append(
                Problem(
                    f"capability CAP_{cap.upper()} (for {why})",
                    "missing: run as root, or with the capabilities of "
                    "deploy/systemd/mpproxy-gateway.service",
                )
            )
    out += _kernel_gateway(cfg, host, caps)
    _, found = _interface(
        host,
        "gateway.lan_interface",
        gw.lan_interface,
        "name the interface facing the passengers",
        "",
    )
    out += found
    if host.netns_exists(gw.listener_namespace):
        out.append(
            Problem(
                f"network namespace {gw.listener_namespace!r}",
                "exists already (another gateway running, or left over): stop it, or "
                f"ip netns del {gw.listener_namespace}",
            )
        )
    n = host.table_routes(gw.listener_table)
    if n:
        out.append(
            Problem(
                f"gateway.listener_table {gw.listener_table}",
                f"holds {n} route(s) already; the gateway replaces and flushes it: choose a free "
                "table (e.g. a carrier's table must differ) or ip route flush table "
                f"{gw.listener_table}",
            )
        )
    out += _carriers(cfg, host)
    out += _tls(cfg, host, "gateway")
    out += _context(cfg, host)
    out += _dirs(cfg, host, gw.control_socket, "gateway.control_socket")
    return out


def _kernel_gateway(cfg: Config, host: Host, caps: set[str]) -> list[Problem]:
    out = []
    if host.which("nft") is not None and (err := host.nft_error()):
        out.append(Problem("nftables", f"nft list tables fails ({err}): modprobe nf_tables"))
    if host.module("veth") is False:
        out.append(
            Problem(
                "kernel module veth",
                "not available: modprobe veth (or install "
                "the kernel's modules: apt-get install linux-image-$(uname -r))",
            )
        )
    if "net_raw" in caps and (err := host.packet_error()):
        out.append(Problem("AF_PACKET sockets", f"cannot be opened ({err}): modprobe af_packet"))
    avail, _ = host.congestion()
    for cc in sorted({c.congestion_control for c in cfg.gateway.carriers}):
        out += _congestion(cc, avail, host, "gateway.carriers[].congestion_control")
    return out


def _congestion(cc: str, avail: set[str], host: Host, key: str) -> list[Problem]:
    have = cc in avail or host.module(f"tcp_{cc}")
    if have:
        return []
    if have is None:
        return [
            Problem(
                f"{key} {cc!r}",
                f"not loaded, and whether this kernel has it cannot be told: modprobe tcp_{cc}",
                warning=True,
            )
        ]
    return [
        Problem(
            f"{key} {cc!r}",
            f"not in this kernel: modprobe tcp_{cc} and add tcp_{cc} to "
            "/etc/modules-load.d/mpproxy.conf, or choose another",
        )
    ]


def _carriers(cfg: Config, host: Host) -> list[Problem]:
    """Each carrier's interface and its source routing toward every node it may use
    (``gateway.node``, or each of ``[[gateway.nodes]]``: a move to another node must not
    find a carrier that cannot reach it)."""
    out = []
    node_ips: list[str] = []  # the first address of each node
    for n in cfg.gateway.fleet():
        node_host = n.address.rpartition(":")[0].strip("[]")
        try:
            ips = [str(ipaddress.ip_address(node_host))]
        except ValueError:
            ips = host.resolve(node_host)
            if not ips:
                what = (
                    f"gateway.nodes {n.name!r} ({node_host})"
                    if cfg.gateway.nodes
                    else f"gateway.node {node_host!r}"
                )
                out.append(Problem(what, "does not resolve: check DNS or give the node's address"))
        node_ips += ips[:1]
    for k, c in enumerate(cfg.gateway.carriers):
        what = f"carrier {c.name!r}"
        if not c.interface:
            out.append(
                Problem(
                    what,
                    "no interface: its paths are not bound to a modem; set "
                    "gateway.carriers[].interface",
                    warning=True,
                )
            )
            continue
        link, found = _interface(
            host,
            f"{what} interface",
            c.interface,
            "is the modem connected (mmcli -L)?",
            " (or connect the modem)",
        )
        out += found
        if link is None:
            continue
        if c.address and c.address not in link.addresses:
            out.append(
                Problem(
                    f"{what} address {c.address}",
                    f"not on {c.interface} (it has {', '.join(link.addresses) or 'none'})"
                    ": fix gateway.carriers[].address or the modem's bearer",
                )
            )
            continue
        src = c.address or (link.addresses[0] if link.addresses else "")
        if not src:
            out.append(
                Problem(
                    f"{what} interface {c.interface!r}",
                    "has no IPv4 address: connect the modem's bearer "
                    "(mmcli -m N --simple-connect=apn=...)",
                )
            )
            continue
        for ip in node_ips:
            via = host.route_out(src, ip)
            if via != c.interface:
                table = 101 + k  # a suggestion: carrier k's own table
                why = f"cannot reach it ({via[1:]})" if via.startswith("!") else f"leaves by {via}"
                out.append(
                    Problem(
                        f"{what} source routing",
                        f"traffic from {src} to the node {ip} {why}, not by {c.interface}: "
                        f"ip rule add from {src} lookup {table} && "
                        f"ip route add default dev {c.interface} table {table}",
                    )
                )
    return out


def _interface(
    host: Host, what: str, name: str, missing: str, down: str
) -> tuple[Link | None, list[Problem]]:
    """An interface that must exist (else ``missing`` says what to do) and be up."""
    link = host.link(name)
    if link is None:
        return None, [Problem(f"{what} {name!r}", f"no such interface: {missing}")]
    if not link.up:
        return link, [Problem(f"{what} {name!r}", f"down: ip link set {name} up{down}")]
    return link, []


def _tls(cfg: Config, host: Host, role: str) -> list[Problem]:
    from cryptography import x509

    from middlebox.paths.pki import GATEWAY_URI_PREFIX
    from middlebox.paths.tls import gateway_context, node_context

    t = cfg.tls
    if t.plaintext:
        return [
            Problem(
                "tls.plaintext",
                "paths are neither encrypted nor authenticated (a closed testbed only)",
                warning=True,
            )
        ]
    try:
        if role == "gateway":
            for n in cfg.gateway.fleet():
                gateway_context(t, n.address)
        else:
            node_context(t, cfg.node.listen)
    except UserError as e:
        return [Problem("certificates", f"{e}: create them with mpproxy pki")]
    except OSError as e:  # unreadable: permissions
        return [Problem("certificates", f"{e.filename}: {e.strerror}: make it readable")]
    out = []
    try:
        ca = x509.load_pem_x509_certificate(Path(t.ca).read_bytes())
        cert = x509.load_pem_x509_certificate(Path(t.cert).read_bytes())
    except (OSError, ValueError) as e:
        return [Problem("certificates", f"cannot be read ({e})")]
    try:
        cert.verify_directly_issued_by(ca)
    except Exception as e:  # InvalidSignature, ValueError (issuer), TypeError (key type)
        out.append(
            Problem(
                f"tls.cert {t.cert}",
                f"not signed by tls.ca {t.ca} ({type(e).__name__}): issue it "
                "with mpproxy pki from that CA",
            )
        )
    now = host.now()
    for key, c in (("tls.ca", ca), ("tls.cert", cert)):
        path = getattr(t, key.split(".")[1])
        if now < c.not_valid_before_utc:
            out.append(
                Problem(
                    f"{key} {path}",
                    f"not valid before {c.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: "
                    "check the host's clock",
                )
            )
        elif now >= c.not_valid_after_utc:
            out.append(
                Problem(
                    f"{key} {path}",
                    f"expired on {c.not_valid_after_utc:%Y-%m-%d}: issue a new one "
                    "with mpproxy pki",
                )
            )
        elif now + datetime.timedelta(days=EXPIRY_WARNING_DAYS) >= c.not_valid_after_utc:
            out.append(
                Problem(
                    f"{key} {path}",
                    f"expires on {c.not_valid_after_utc:%Y-%m-%d}: renew it with mpproxy pki",
                    warning=True,
                )
            )
    if role == "gateway":
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        ids = [u[len(GATEWAY_URI_PREFIX) :] for u in uris if u.startswith(GATEWAY_URI_PREFIX)]
        if ids != [cfg.gateway.id]:
            out.append(
                Problem(
                    f"tls.cert {t.cert}",
                    f"is for gateway {', '.join(ids) or '(none)'}, not gateway.id "
                    f"{cfg.gateway.id!r}: mpproxy pki gateway --id "
                    f"{cfg.gateway.id}",
                )
            )
    return out


def _config(cfg: Config, role: str) -> list[Problem]:
    """What the process itself would refuse at start beyond the file's own rules."""
    if role == "gateway" and not cfg.gateway.carriers:
        return [Problem("gateway.carriers", "none: add one [[gateway.carriers]] table per modem")]
    return []


def _context(cfg: Config, host: Host) -> list[Problem]:
    from middlebox.context.carriers import load_replay
    from middlebox.context.loop import modem_mapping

    c = cfg.context
    out = []
    try:
        if c.source == "replay":
            if not c.replay_files:
                raise UserError("context.replay_files: needed when context.source = replay")
            load_replay(c.replay_files, [x.name for x in cfg.gateway.carriers])
        elif c.source == "modemmanager":
            modem_mapping(cfg)
    except UserError as e:
        out.append(Problem("context", str(e)))
    if c.source == "modemmanager" and host.which(c.modem_program) is None:
        out.append(
            Problem(
                f"context.modem_program {c.modem_program!r}",
                "not found: apt-get install modemmanager",
            )
        )
    if c.source == "command" and (not c.command or host.which(c.command[0]) is None):
        what = c.command[0] if c.command else "(empty)"
        out.append(Problem(f"context.command {what!r}", "not found or not executable"))
    if c.use_contextdb:
        out += _dirs(cfg, host, cfg.contextdb.path, "contextdb.path")
    return out


def _dirs(cfg: Config, host: Host, path: str, key: str) -> list[Problem]:
    if path and (err := host.dir_error(str(Path(path).parent))):
        return [Problem(f"{key} {path}", f"cannot be created ({err})")]
    return []


def check_node(cfg: Config, host: Host) -> list[Problem]:
    """Everything the node needs of this host; see the module text."""
    n = cfg.node
    out: list[Problem] = []
    addr, _, port = n.listen.rpartition(":")
    addr = addr.strip("[]")
    if err := host.bind_error(addr, int(port)):
        hint = (
            "give the process CAP_NET_BIND_SERVICE (the systemd unit does) or use a port >= 1024"
            if int(port) < 1024 and "net_bind_service" not in host.capabilities()
            else "stop whatever listens there, or change node.listen"
        )
        out.append(Problem(f"node.listen {n.listen}", f"cannot be bound ({err}): {hint}"))
    avail, allowed = host.congestion()
    out += _congestion("bbr", avail, host, "the node's paths' congestion control")
    if "net_admin" not in host.capabilities() and "bbr" not in allowed:
        out.append(
            Problem(
                "congestion control bbr",
                "not allowed for a process without CAP_NET_ADMIN (its paths would fall back "
                "to the default): add it, e.g. sysctl -w net.ipv4.tcp_allowed_congestion_control="
                f"'{' '.join(sorted(allowed | {'bbr'}))}' and the same line in "
                "/etc/sysctl.d/90-mpproxy.conf",
            )
        )
    for key in ("revoked_gateways", "allowed_gateways"):
        path = getattr(n, key)
        if path and (err := host.read_error(path)):
            out.append(Problem(f"node.{key} {path}", f"cannot be read ({err})"))
    out += _tls(cfg, host, "node")
    if cfg.context.use_contextdb and (err := host.read_error(cfg.contextdb.path)):
        out.append(
            Problem(
                f"contextdb.path {cfg.contextdb.path}",
                f"cannot be read ({err}): the node opens an existing database "
                "read-only (copy one, or use the fleet store)",
            )
        )
    out += _dirs(cfg, host, n.control_socket, "node.control_socket")
    return out


def report(problems: list[Problem], role: str) -> tuple[str, int]:
    """The text ``--check`` prints and its exit status (0: nothing to fix)."""
    lines = [p.line() for p in problems]
    errors = sum(not p.warning for p in problems)
    if errors:
        lines.append(f"{errors} problem(s): the {role} will not run correctly on this host")
    else:
        lines.append(f"ok: this host is ready for the {role}")
    return "\n".join(lines), 1 if errors else 0
