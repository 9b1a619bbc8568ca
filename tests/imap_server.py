"""A real IMAP server on 127.0.0.1 for the inbound tests: Debian's dovecot, not a mock.

Run in the foreground (``dovecot -F``) as a child of the test process with a throw-away config,
state and Maildir under one temporary folder, listening on two free loopback ports: one plain
(for ``security = "none"`` and STARTTLS) and one implicit TLS, with a self-signed certificate
for 127.0.0.1 (the same generator as the SMTP fixture). The passdb is ``static``: every user
name logs in with :data:`PASSWORD`, so each test takes a fresh user and so a fresh, empty
mailbox, and one server serves a whole module. ``auth_failure_delay = 0`` keeps the wrong-
password test fast. The fixture stops the server (SIGTERM to the master it started, which stops
its own children) and removes the folder.

When the binary is missing the tests skip and say how to get it: ``apt-get install -y
dovecot-imapd``. ``.ci/run`` installs it and sets ``OUTREACH_REQUIRE_IMAP=1``, which turns that
skip into a failure, so the real-IMAP tests can never silently stop running in CI.

Under root, dovecot refuses to run its login and mail processes as root: they run as the
``dovenull`` and ``dovecot`` users the Debian package creates. Under any other user everything
runs as that user, without the login chroot (which needs root).
"""

from __future__ import annotations

import contextlib
import grp
import imaplib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.smtp_server import TlsFiles, make_self_signed

HOST = "127.0.0.1"
PASSWORD = "Imap-test-pw-7f3a9c0e"
APT_LINE = "apt-get install -y dovecot-imapd"


def dovecot_binary() -> str | None:
    found = shutil.which("dovecot")
    if found:
        return found
    for candidate in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Dovecot:
    root: Path
    port: int  # plain text and STARTTLS
    tls_port: int  # implicit TLS
    tls: TlsFiles
    process: subprocess.Popen[bytes]
    _users: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def new_user(self) -> str:
        """A user nobody has used yet on this server: an empty INBOX of its own."""
        return f"user{next(self._users)}"

    @contextlib.contextmanager
    def client(self, user: str) -> Iterator[imaplib.IMAP4]:
        imap = imaplib.IMAP4(HOST, self.port, timeout=10)
        try:
            imap.login(user, PASSWORD)
            yield imap
        finally:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                imap.logout()

    def append(self, user: str, raw: bytes, mailbox: str = "INBOX", flags: str = "") -> None:
        """IMAP APPEND, the way a message lands in the mailbox for these tests."""
        with self.client(user) as imap:
            typ, data = imap.append(mailbox, flags or None, None, raw)
            assert typ == "OK", data

    def messages(self, user: str, mailbox: str = "INBOX") -> list[tuple[int, str, bytes]]:
        """(uid, flags, exact bytes) of every message in ``mailbox``."""
        out: list[tuple[int, str, bytes]] = []
        with self.client(user) as imap:
            typ, _ = imap.select(mailbox, readonly=True)
            if typ != "OK":
                return out
            typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
            for item in data:
                if isinstance(item, tuple):
                    meta = item[0].decode()
                    uid = int(meta.split("UID ", 1)[1].split()[0])
                    flags = meta.split("FLAGS (", 1)[1].split(")", 1)[0]
                    out.append((uid, flags, item[1]))
        return out

    def clear_seen(self, user: str, mailbox: str = "INBOX") -> None:
        with self.client(user) as imap:
            imap.select(mailbox)
            imap.uid("STORE", "1:*", "-FLAGS.SILENT", r"(\Seen)")

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)


def _users() -> tuple[int, int, str, str]:
    """(mail uid, mail gid, internal user, login user) for this process's privileges."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return me.pw_uid, me.pw_gid, me.pw_name, me.pw_name
    try:
        internal = pwd.getpwnam("dovecot")
        pwd.getpwnam("dovenull")
    except KeyError:
        _unavailable(f"dovecot's system users are missing; reinstall it ({APT_LINE})")
        raise
    return internal.pw_uid, internal.pw_gid, "dovecot", "dovenull"


def _unavailable(reason: str) -> None:
    if os.environ.get("OUTREACH_REQUIRE_IMAP") == "1":
        pytest.fail(f"OUTREACH_REQUIRE_IMAP=1 but {reason}")
    pytest.skip(reason)


def start_dovecot() -> Dovecot:
    binary = dovecot_binary()
    if binary is None:
        _unavailable(f"no dovecot binary for the real-IMAP tests ({APT_LINE})")
        raise AssertionError("unreachable")
    uid, gid, internal, login = _users()
    # Outside pytest's tmp_path: its 0700 parents would stop the unprivileged mail process.
    root = Path(tempfile.mkdtemp(prefix="outreach-dovecot-"))
    root.chmod(0o755)
    for sub in ("run", "state", "mail"):
        (root / sub).mkdir()
    if os.geteuid() == 0:
        os.chown(root / "mail", uid, gid)
    tls = make_self_signed(root)
    port, tls_port = free_port(), free_port()
    conf = root / "dovecot.conf"
    conf.write_text(
        f"""
base_dir = {root}/run
state_dir = {root}/state
instance_name = outreach-test-{port}
log_path = {root}/dovecot.log
protocols = imap
listen = {HOST}
ssl = yes
ssl_cert = <{tls.cert}
ssl_key = <{tls.key}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:{root}/mail/%n
first_valid_uid = {uid}
default_internal_user = {internal}
default_internal_group = {grp.getgrgid(gid).gr_name}
default_login_user = {login}
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%n
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = {HOST}
    port = {port}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {tls_port}
    ssl = yes
  }}
}}
"""
    )
    process = subprocess.Popen(
        [binary, "-F", "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Dovecot(root, port, tls_port, tls, process)
    deadline = time.monotonic() + 15
    while True:
        if process.poll() is not None:
            log = server.log()
            server.stop()
            raise RuntimeError(f"dovecot exited with {process.returncode}:\n{log}")
        try:
            with socket.create_connection((HOST, port), timeout=1) as s:
                if s.recv(64).startswith(b"* OK"):
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            log = server.log()
            server.stop()
            raise RuntimeError(f"dovecot did not answer on {HOST}:{port}:\n{log}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    """One real dovecot per test module; take a fresh mailbox with ``dovecot.new_user()``."""
    server = start_dovecot()
    try:
        yield server
    finally:
        server.stop()
