"""Real servers for tests: a throw-away Dovecot IMAP server and an aiosmtpd SMTP sink.

Both listen on a free 127.0.0.1 port, keep every file under the test's tmp directory and are
stopped by the fixtures' finalizers. Either can also take OAuth2 bearer tokens (SASL XOAUTH2,
as Microsoft 365 does): Dovecot through its oauth2 passdb asking a small local RFC 7662
token-introspection endpoint (`IntrospectionServer`), aiosmtpd through an XOAUTH2 handler.
Use them from any test module with

    pytest_plugins = ["tests.servers"]

which provides the fixtures `dovecot_factory`, `dovecot`, `smtp_factory` and `smtp_server`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session
from imapclient import IMAPClient

from cme_mailbot.config import MailboxSettings

DOVECOT = os.environ.get("CME_TEST_DOVECOT", "/usr/sbin/dovecot")

# Dovecot 2.3's post-login CAPABILITY list, from which start_dovecot() hides some on request.
_DOVECOT_CAPABILITIES = (
    "IMAP4rev1",
    "SASL-IR",
    "LOGIN-REFERRALS",
    "ID",
    "ENABLE",
    "IDLE",
    "SORT",
    "SORT=DISPLAY",
    "THREAD=REFERENCES",
    "THREAD=REFS",
    "THREAD=ORDEREDSUBJECT",
    "MULTIAPPEND",
    "URL-PARTIAL",
    "CATENATE",
    "UNSELECT",
    "CHILDREN",
    "NAMESPACE",
    "UIDPLUS",
    "LIST-EXTENDED",
    "I18NLEVEL=1",
    "CONDSTORE",
    "QRESYNC",
    "ESEARCH",
    "ESORT",
    "SEARCHRES",
    "WITHIN",
    "CONTEXT=SEARCH",
    "LIST-STATUS",
    "BINARY",
    "MOVE",
    "SNIPPET=FUZZY",
    "PREVIEW=FUZZY",
    "PREVIEW",
    "STATUS=SIZE",
    "SAVEDATE",
    "LITERAL+",
    "NOTIFY",
)

# Unix socket paths are limited to 108 bytes; Dovecot's longest under base_dir is ~25.
_MAX_BASE_DIR = 80


def free_port() -> int:
    """A port nothing listens on right now (bind to 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int,
    timeout: float = 10.0,
    alive: Callable[[], bool] = lambda: True,
    greeting: bytes | None = None,
) -> None:
    """Wait until 127.0.0.1:port accepts (and, if given, sends a line starting `greeting`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"server exited before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
                if greeting is None or conn.recv(256).startswith(greeting):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def dovecot_available() -> bool:
    return os.access(DOVECOT, os.X_OK)


def skip_without_dovecot() -> None:
    if not dovecot_available():
        pytest.skip(f"Dovecot not installed ({DOVECOT} missing): apt-get install dovecot-imapd")


# --- TLS material -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return _make_tls_files_cryptography(directory)
    except ImportError:
        return _make_tls_files_openssl(directory)


def _make_tls_files_cryptography(directory: Path) -> TlsFiles:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cme-mailbot test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def _make_tls_files_openssl(directory: Path) -> TlsFiles:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("neither the cryptography package nor the openssl CLI is available")
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca_key = directory / "ca.key"
    csr = directory / "server.csr"
    ext = directory / "server.ext"
    ext.write_text(
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        "authorityKeyIdentifier = keyid\n"
        "subjectKeyIdentifier = hash\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=30)

    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(files.ca_file), "-days", "2",
        "-subj", "/CN=cme-mailbot test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", *ec, "-keyout", str(files.key_file), "-out", str(csr), "-subj", "/CN=localhost")
    run("x509", "-req", "-in", str(csr), "-CA", str(files.ca_file), "-CAkey", str(ca_key),
        "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
        "-extfile", str(ext), "-out", str(files.cert_file))  # fmt: skip
    return files


# --- OAuth2 token introspection ------------------------------------------------------------------


class IntrospectionServer:
    """A tiny RFC 7662 token-introspection endpoint on 127.0.0.1 (POST /introspect, token=...).

    It knows a set of valid bearer tokens, each for one user, and answers
    {"active": true, "username": USER} for those and {"active": false} for anything else.
    Dovecot's oauth2 passdb asks it on every XOAUTH2 / OAUTHBEARER login (no auth cache), so
    `grant` and `revoke` take effect at once. `asked` lists the tokens it was asked about.
    """

    def __init__(self, tokens: Mapping[str, str] | None = None) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, str] = dict(tokens or {})
        self._asked: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
                token = (form.get("token") or [""])[0]
                if self.path.split("?")[0] != "/introspect":
                    self._answer(404, {"error": "not found"})
                    return
                self._answer(200, owner._introspect(token))

            def _answer(self, status: int, body: Mapping[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # no request lines (with tokens) on the test's stderr

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="introspection", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/introspect"

    @property
    def asked(self) -> list[str]:
        with self._lock:
            return list(self._asked)

    def grant(self, token: str, user: str = "cme") -> None:
        with self._lock:
            self._tokens[token] = user

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def _introspect(self, token: str) -> dict[str, Any]:
        with self._lock:
            self._asked.append(token)
            user = self._tokens.get(token)
        if user is None:
            return {"active": False}
        return {"active": True, "username": user, "scope": "https://outlook.office365.com/.default"}

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _oauth2_conf(introspection_url: str) -> str:
    """dovecot-oauth2.conf.ext for the local introspection endpoint (Dovecot 2.3 keys)."""
    return f"""# Generated by tests/servers.py for one test; not a production config.
introspection_mode = post
introspection_url = {introspection_url}
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
timeout_msecs = 5000
"""


# --- Dovecot ------------------------------------------------------------------------------------


@dataclass
class DovecotServer:
    """A running Dovecot: `port` (plain, STARTTLS when TLS is on), `ssl_port` (implicit TLS)."""

    root: Path
    config: Path
    port: int
    ssl_port: int | None
    users: dict[str, str]
    separator: str
    tls: TlsFiles | None
    log_file: Path
    _base_dir: Path
    _own_base_dir: bool
    introspection: IntrospectionServer | None = None  # set when started with oauth2=True
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def ca_file(self) -> Path | None:
        return self.tls.ca_file if self.tls else None

    def maildir(self, user: str = "cme") -> Path:
        """The user's Maildir on disk (for tests that look behind the server's back)."""
        return self.root / "mail" / user / "Maildir"

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._base_dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "dovecot.stderr").open("ab"),
            start_new_session=True,  # its own process group: stop() can reap the children too
        )
        proc = self._proc
        try:
            # The greeting comes once auth and the login process are fully up; stopping before
            # that costs a 5 s handshake timeout inside Dovecot.
            wait_for_port(self.port, alive=lambda: proc.poll() is None, greeting=b"* OK")
            if self.ssl_port:
                wait_for_port(self.ssl_port, alive=lambda: proc.poll() is None)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n--- dovecot log ---\n{self.log_tail()}") from None

    def stop(self, *, graceful: bool = True) -> None:
        """Stop Dovecot (SIGTERM: it logs out its clients; takes ~1 s), or kill it outright."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if not graceful:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        elif proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        # Dovecot's master stops its children on exit; make sure no stray one keeps the port.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def restart(self) -> None:
        """Stop and start again on the same port with the same mail (open sessions are cut)."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Kill the server and remove what lives outside the test's tmp dir (fixture teardown)."""
        self.stop(graceful=False)
        if self.introspection is not None:
            self.introspection.stop()
        if self._own_base_dir:
            shutil.rmtree(self._base_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for f in (self.log_file, self.root / "dovecot.stderr"):
            if f.exists():
                parts.extend(f.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(parts)

    def client(self, user: str = "cme", *, select: str | None = "INBOX") -> IMAPClient:
        """A separate, logged-in plain connection: "another client" in tests."""
        c = IMAPClient(self.host, port=self.port, ssl=False, timeout=10)
        c.login(user, self.users[user])
        if select:
            c.select_folder(select)
        return c

    def settings(self, user: str = "cme", **overrides: Any) -> MailboxSettings:
        """MailboxSettings for the imap backend pointing at this server (plain by default)."""
        values: dict[str, Any] = {
            "backend": "imap",
            "host": self.host,
            "port": self.port,
            "security": "none",
            "username": user,
            "timeout_seconds": 10.0,
        }
        values.update(overrides)
        return MailboxSettings(**values)


def _dovecot_conf(
    *,
    root: Path,
    base_dir: Path,
    port: int,
    ssl_port: int | None,
    separator: str,
    tls: TlsFiles | None,
    capabilities: list[str] | None,
    users: Iterable[str],
    oauth2_conf: Path | None = None,
) -> str:
    mail_root = root / "mail"
    layout = ":LAYOUT=fs" if separator == "/" else ""
    if os.geteuid() == 0:
        # Dovecot refuses to run login processes or mail access as root. Internal processes run
        # as its own users; mail as `nobody`, chrooted into the user's directory (the chroot is
        # entered as root, so the 0700 pytest tmp dirs above it need not be traversable).
        internal = _existing_user("dovecot", "nobody")
        login = _existing_user("dovenull", "nobody")
        mail_user = pwd.getpwnam(_existing_user("nobody", "dovecot"))
        for user in users:
            home = mail_root / user
            home.mkdir(parents=True, exist_ok=True)
            os.chown(home, mail_user.pw_uid, mail_user.pw_gid)
        identity = f"""
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = {mail_user.pw_uid}
first_valid_gid = {mail_user.pw_gid}
valid_chroot_dirs = {mail_root}
service auth {{
  user = root
}}
"""
        userdb_args = f"uid={mail_user.pw_uid} gid={mail_user.pw_gid} home={mail_root}/%u/./"
    else:
        # Rootless: everything runs as the current user, no chroots.
        me = pwd.getpwuid(os.geteuid())
        group = grp.getgrgid(me.pw_gid).gr_name
        identity = f"""
default_internal_user = {me.pw_name}
default_internal_group = {group}
default_login_user = {me.pw_name}
first_valid_uid = {me.pw_uid}
first_valid_gid = {me.pw_gid}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
"""
        userdb_args = f"uid={me.pw_uid} gid={me.pw_gid} home={mail_root}/%u"

    if tls:
        ssl_block = f"ssl = yes\nssl_cert = <{tls.cert_file}\nssl_key = <{tls.key_file}\n"
    else:
        ssl_block = "ssl = no\n"
    capability_line = f"imap_capability = {' '.join(capabilities)}\n" if capabilities else ""
    mechanisms = "plain login"
    password_mechanisms = ""
    oauth2_passdb = ""
    if oauth2_conf is not None:
        # Passwords for PLAIN/LOGIN (the tests' "other client"), bearer tokens checked by the
        # introspection endpoint for XOAUTH2/OAUTHBEARER, as on Microsoft 365.
        # No failure delay and no per-IP penalty (it doubles with each failure from
        # 127.0.0.1, up to 15 s), so tests of refused tokens stay fast.
        mechanisms += " xoauth2 oauthbearer"
        password_mechanisms = "  mechanisms = plain login\n"
        oauth2_passdb = f"""auth_failure_delay = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {oauth2_conf}
}}
"""
    return f"""# Generated by tests/servers.py for one test; not a production config.
base_dir = {base_dir}
state_dir = {root / "state"}
instance_name = cme-test-{port}
listen = 127.0.0.1
protocols = imap
log_path = {root / "dovecot.log"}
auth_mechanisms = {mechanisms}
disable_plaintext_auth = no
{ssl_block}{identity}
mail_location = maildir:~/Maildir{layout}
namespace inbox {{
  inbox = yes
  separator = {separator}
  prefix =
}}
{capability_line}
passdb {{
  driver = passwd-file
{password_mechanisms}  args = scheme=PLAIN username_format=%u {root / "users"}
}}
{oauth2_passdb}userdb {{
  driver = static
  args = {userdb_args}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {ssl_port or 0}
  }}
}}
"""


def _existing_user(*names: str) -> str:
    for name in names:
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError(f"none of the users {names} exists; cannot run Dovecot as root")


def start_dovecot(
    tmp_path: Path,
    *,
    separator: str = ".",
    hide_move: bool = False,
    hide_capabilities: Iterable[str] = (),
    users: Mapping[str, str] | None = None,
    ssl: bool = False,
    oauth2: bool = False,
    oauth2_tokens: Mapping[str, str] | None = None,
) -> DovecotServer:
    """Write a self-contained dovecot.conf under `tmp_path` and start Dovecot in the foreground.

    `separator` is the hierarchy delimiter ("/" also switches the Maildir to LAYOUT=fs);
    `hide_move` / `hide_capabilities` take capabilities out of the post-login CAPABILITY list
    (the commands still work: this simulates an older or different server to the client);
    `ssl` turns on STARTTLS on `port` and implicit TLS on `ssl_port` with a throw-away CA;
    `oauth2` also offers SASL XOAUTH2 and OAUTHBEARER through Dovecot's oauth2 passdb, which
    asks `server.introspection` (an `IntrospectionServer`) whether a bearer token is valid;
    `oauth2_tokens` ({token: user}) are valid from the start, more with `introspection.grant`.
    Passwords keep working for PLAIN and LOGIN either way.
    """
    skip_without_dovecot()
    if separator not in (".", "/"):
        raise ValueError("separator must be '.' or '/'")
    users = dict(users or {"cme": "secret"})
    root = tmp_path
    root.mkdir(parents=True, exist_ok=True)
    (root / "state").mkdir(exist_ok=True)
    (root / "users").write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in users.items()))

    base_dir = root / "run"
    own_base_dir = len(str(base_dir)) > _MAX_BASE_DIR
    if own_base_dir:
        base_dir = Path(tempfile.mkdtemp(prefix="cme-dovecot-"))

    hidden = {c.upper() for c in hide_capabilities} | ({"MOVE"} if hide_move else set())
    capabilities = [c for c in _DOVECOT_CAPABILITIES if c.upper() not in hidden] if hidden else None
    tls = make_tls_files(root / "tls") if ssl else None
    introspection: IntrospectionServer | None = None
    oauth2_conf: Path | None = None
    if oauth2 or oauth2_tokens:
        introspection = IntrospectionServer(oauth2_tokens)
        oauth2_conf = root / "dovecot-oauth2.conf.ext"
        oauth2_conf.write_text(_oauth2_conf(introspection.url))
    port = free_port()
    ssl_port = free_port() if ssl else None
    config = root / "dovecot.conf"
    config.write_text(
        _dovecot_conf(
            root=root,
            base_dir=base_dir,
            port=port,
            ssl_port=ssl_port,
            separator=separator,
            tls=tls,
            capabilities=capabilities,
            users=users,
            oauth2_conf=oauth2_conf,
        )
    )
    server = DovecotServer(
        root=root,
        config=config,
        port=port,
        ssl_port=ssl_port,
        users=users,
        separator=separator,
        tls=tls,
        log_file=root / "dovecot.log",
        _base_dir=base_dir,
        _own_base_dir=own_base_dir,
        introspection=introspection,
    )
    try:
        server.start()
    except BaseException:
        server.cleanup()
        raise
    return server


# --- SMTP ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    auth_user: str | None = None  # who authenticated the session (XOAUTH2 servers)


class _StoringHandler:
    """aiosmtpd handler: keeps every accepted message, or answers with a configured reply."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[ReceivedMessage] = []
        self.reply: str | None = None  # e.g. "451 4.3.0 try later"; None accepts
        self.reply_at = "data"  # or "rcpt": refuse each recipient instead
        self.delay = 0.0  # seconds before answering DATA, as a distant server takes (bench)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.reply is not None and self.reply_at == "rcpt":
            return self.reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.reply is not None:
            return self.reply
        content = envelope.original_content or b""
        if isinstance(content, str):  # pragma: no cover - decode_data is off
            content = content.encode()
        auth_user = session.auth_data if isinstance(session.auth_data, str) else None
        with self.lock:
            self.messages.append(
                ReceivedMessage(
                    mail_from=str(envelope.mail_from),
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    data=bytes(content),
                    auth_user=auth_user,
                )
            )
        return "250 2.0.0 OK stored"


# What Exchange Online answers to a refused bearer token, and its error challenge's content.
XOAUTH2_REFUSED = "535 5.7.3 Authentication unsuccessful"
_XOAUTH2_ERROR = {
    "status": "401",
    "schemes": "bearer",
    "scope": "https://outlook.office365.com/.default",
}


class _XOAuth2Handler(_StoringHandler):
    """An SMTP sink that takes SASL XOAUTH2 only, for the bearer tokens it was given.

    As Microsoft 365 and Gmail do, a refused token gets a 334 challenge carrying a base64 JSON
    error; the client must answer it with an empty line, and then gets a 535. What clients
    sent in answer to that challenge is kept in `error_challenge_replies`.
    """

    def __init__(self, tokens: Mapping[str, str]) -> None:
        super().__init__()
        self.tokens: dict[str, str] = dict(tokens)  # token -> the user it is valid for
        self.attempts: list[tuple[str, str]] = []  # (user, token) of every AUTH XOAUTH2
        self.error_challenge_replies: list[bytes] = []

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        blob: Any
        if len(args) == 1:  # no initial response: ask for it with an empty challenge
            blob = await server.challenge_auth("")
            if blob is MISSING:  # the client cancelled ("*"); challenge_auth answered 501
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        fields = dict(
            part.split("=", 1)
            for part in bytes(blob).decode("utf-8", "replace").split("\x01")
            if "=" in part
        )
        user = fields.get("user", "")
        scheme, _, token = fields.get("auth", "").partition(" ")
        with self.lock:
            self.attempts.append((user, token))
            valid = scheme.lower() == "bearer" and bool(token) and self.tokens.get(token) == user
        if valid:
            return AuthResult(success=True, auth_data=user)
        reply = await server.challenge_auth(json.dumps(_XOAUTH2_ERROR))
        if reply is MISSING:
            return AuthResult(success=False, handled=True)
        with self.lock:
            self.error_challenge_replies.append(bytes(reply))
        return AuthResult(success=False, handled=False, message=XOAUTH2_REFUSED)


class SmtpServer:
    """An SMTP sink on 127.0.0.1; `stop()` / `start()` simulate the server being down and back.

    With `oauth2_tokens` ({token: user}) it requires SASL XOAUTH2 before MAIL FROM and takes no
    other mechanism. It offers AUTH without TLS (auth_require_tls=False): loopback tests only.
    """

    def __init__(self, port: int | None = None, oauth2_tokens: Mapping[str, str] | None = None):
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._handler: _StoringHandler
        self._smtp_options: dict[str, Any] = {}
        if oauth2_tokens is None:
            self._handler = _StoringHandler()
        else:
            self._handler = _XOAuth2Handler(oauth2_tokens)
            # AUTH is required by the handler's MAIL hook rather than auth_required=True,
            # which warns when TLS is not required too.
            self._smtp_options = {
                "auth_require_tls": False,
                "auth_exclude_mechanism": ["LOGIN", "PLAIN"],
            }
        self._controller: Controller | None = None

    def _oauth2(self) -> _XOAuth2Handler:
        if not isinstance(self._handler, _XOAuth2Handler):
            raise RuntimeError("this SMTP server was started without oauth2_tokens")
        return self._handler

    def grant(self, token: str, user: str) -> None:
        """Accept `token` for `user` from now on (XOAUTH2 servers only)."""
        handler = self._oauth2()
        with handler.lock:
            handler.tokens[token] = user

    def revoke(self, token: str) -> None:
        handler = self._oauth2()
        with handler.lock:
            handler.tokens.pop(token, None)

    @property
    def auth_attempts(self) -> list[tuple[str, str]]:
        """(user, bearer token) of every AUTH XOAUTH2, in order (XOAUTH2 servers only)."""
        handler = self._oauth2()
        with handler.lock:
            return list(handler.attempts)

    @property
    def error_challenge_replies(self) -> list[bytes]:
        """What clients answered to the error challenge after a refused token (should be b"")."""
        handler = self._oauth2()
        with handler.lock:
            return list(handler.error_challenge_replies)

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._handler.lock:
            return list(self._handler.messages)

    def reply_with(self, reply: str | None, *, at: str = "data") -> None:
        """Answer with this reply (e.g. "451 4.3.0 busy", "554 5.7.1 no"); None accepts.

        `at` is "data" (the message is refused after DATA) or "rcpt" (every RCPT TO is refused).
        """
        if at not in ("data", "rcpt"):
            raise ValueError("at must be 'data' or 'rcpt'")
        self._handler.reply = reply
        self._handler.reply_at = at

    def start(self) -> None:
        if self._controller is not None:
            return
        # decode_data stays False so the handler sees the bytes exactly as sent.
        controller = Controller(
            self._handler,
            hostname=self.host,
            port=self.port,
            ready_timeout=10,
            data_size_limit=50 * 1024 * 1024,
            **self._smtp_options,
        )
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()


def start_smtp(
    *,
    reply: str | None = None,
    reply_at: str = "data",
    oauth2_tokens: Mapping[str, str] | None = None,
    delay: float = 0.0,
) -> SmtpServer:
    """Start an SMTP sink on a free 127.0.0.1 port; `reply` as in `SmtpServer.reply_with`.

    `oauth2_tokens` ({token: user}) makes it require AUTH XOAUTH2 with one of those tokens;
    `delay` (seconds) is how long it takes to answer each DATA, as a distant server would.
    """
    server = SmtpServer(oauth2_tokens=oauth2_tokens)
    server.reply_with(reply, at=reply_at)
    server._handler.delay = delay
    server.start()
    return server


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def dovecot_factory(tmp_path: Path) -> Iterator[Callable[..., DovecotServer]]:
    """Start any number of Dovecot servers (keyword arguments of `start_dovecot`)."""
    skip_without_dovecot()
    started: list[DovecotServer] = []

    def factory(**kwargs: Any) -> DovecotServer:
        server = start_dovecot(tmp_path / f"dovecot{len(started)}", **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.cleanup()


@pytest.fixture
def dovecot(dovecot_factory: Callable[..., DovecotServer]) -> DovecotServer:
    """A plain-text Dovecot with user "cme" / "secret" and "." as the hierarchy delimiter."""
    return dovecot_factory()


@pytest.fixture
def smtp_factory() -> Iterator[Callable[..., SmtpServer]]:
    started: list[SmtpServer] = []

    def factory(**kwargs: Any) -> SmtpServer:
        server = start_smtp(**kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def smtp_server(smtp_factory: Callable[..., SmtpServer]) -> SmtpServer:
    return smtp_factory()


__all__ = [
    "XOAUTH2_REFUSED",
    "DovecotServer",
    "IntrospectionServer",
    "ReceivedMessage",
    "SmtpServer",
    "TlsFiles",
    "dovecot",
    "dovecot_factory",
    "free_port",
    "make_tls_files",
    "smtp_factory",
    "smtp_server",
    "start_dovecot",
    "start_smtp",
]


def catches_signal(pid: int, signum: int) -> bool:
    """Whether the process has installed a handler for `signum` (Linux: /proc SigCgt)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False
