"""A certificate authority the test makes, and a PostgreSQL server that speaks only TLS.

`make_certs(directory)` writes a fresh CA (`trustme`) and a server certificate for `127.0.0.1`
and `localhost` signed by it: the CA as PEM (what clients trust: `sslrootcert=`,
`ssl.ca.location`), the server's key and chain as PEM (PostgreSQL) and as a PKCS#12 keystore
(Apache Kafka). A second, unrelated CA is there to be trusted by mistake.

`TlsPostgres` is a PostgreSQL server of its own in a temp directory, started from the Debian
`postgresql` package's binaries (`/usr/lib/postgresql/<major>/bin`): the `pgserver` wheel the
other tests use is built without OpenSSL. It listens on 127.0.0.1 only, refuses connections
without TLS (`hostnossl ... reject`) and asks for a SCRAM-SHA-256 password. As root it runs as
the `postgres` system user (PostgreSQL refuses to run as root). `find_postgres_bindir()` is
None when the package is not installed (`.ci/run` installs it in CI).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from llm_worker.devkit.devstack import free_port

__all__ = ["Certs", "TlsPostgres", "find_postgres_bindir", "make_certs"]


@dataclass(frozen=True)
class Certs:
    ca: Path
    """The CA certificate (PEM) that signed the server's."""
    other_ca: Path
    """An unrelated CA (PEM): trusting it instead must fail the handshake."""
    server_cert: Path
    """The server's certificate chain (PEM)."""
    server_key: Path
    """The server's private key (PEM, unencrypted)."""
    keystore: Path
    """The server's key and chain as PKCS#12, protected by `keystore_password`."""
    keystore_password: str


def make_certs(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    paths = {
        name: directory / name for name in ("ca.pem", "other-ca.pem", "server.pem", "server.key")
    }
    ca.cert_pem.write_to_path(str(paths["ca.pem"]))
    other.cert_pem.write_to_path(str(paths["other-ca.pem"]))
    issued.private_key_pem.write_to_path(str(paths["server.key"]))
    with paths["server.pem"].open("wb") as fh:
        for blob in issued.cert_chain_pems:
            fh.write(blob.bytes())
    password = "keystore-" + os.urandom(8).hex()
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    chain = [x509.load_pem_x509_certificate(b.bytes()) for b in issued.cert_chain_pems]
    p12 = pkcs12.serialize_key_and_certificates(
        b"server",
        key,  # type: ignore[arg-type]
        chain[0],
        chain[1:] or None,
        serialization.BestAvailableEncryption(password.encode()),
    )
    keystore = directory / "server.p12"
    keystore.write_bytes(p12)
    return Certs(
        ca=paths["ca.pem"],
        other_ca=paths["other-ca.pem"],
        server_cert=paths["server.pem"],
        server_key=paths["server.key"],
        keystore=keystore,
        keystore_password=password,
    )


def find_postgres_bindir() -> Path | None:
    """The newest Debian PostgreSQL server's bin directory (built with OpenSSL), or None."""
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "postgres").is_file()]
    if not found:
        return None
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


_CONF = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
ssl = on
ssl_cert_file = '{cert}'
ssl_key_file = '{key}'
password_encryption = 'scram-sha-256'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 32MB
max_connections = 40
logging_collector = off
"""

_HBA = """\
hostnossl all all 0.0.0.0/0 reject
hostssl   all all 127.0.0.1/32 scram-sha-256
local     all all scram-sha-256
"""


class TlsPostgres:
    """A PostgreSQL server that speaks only TLS, with user `user` and password `password`.

    `dsn(ca)` is the `DATABASE_URL` a user would write: the password percent-encoded,
    `sslmode=verify-full` and `sslrootcert=<ca>`.
    """

    user = "llm"

    def __init__(self, bindir: Path, certs: Certs, password: str) -> None:
        self._bin = bindir
        self._certs = certs
        self.password = password
        self.port = free_port()
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._runas: str | None = "postgres" if os.geteuid() == 0 else None

    def dsn(self, ca: Path | None = None, database: str = "postgres") -> str:
        secret = quote(self.password, safe="")
        root = ca or self._certs.ca
        return (
            f"postgresql://{self.user}:{secret}@127.0.0.1:{self.port}/{database}"
            f"?sslmode=verify-full&sslrootcert={root}"
        )

    def start(self, timeout: float = 60.0) -> TlsPostgres:
        self._dir = Path(tempfile.mkdtemp(prefix="llm-worker-pgtls-"))
        data = self._dir / "data"
        cert, key = self._dir / "server.pem", self._dir / "server.key"
        shutil.copy(self._certs.server_cert, cert)
        shutil.copy(self._certs.server_key, key)
        key.chmod(0o600)
        pwfile = self._dir / "pw"
        pwfile.write_text(self.password + "\n", encoding="utf-8")
        pwfile.chmod(0o600)
        self._own(self._dir, cert, key, pwfile)
        self._run(
            "initdb", "-D", str(data), "-U", self.user, "--auth=scram-sha-256",
            f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        with (data / "postgresql.conf").open("a", encoding="utf-8") as fh:
            fh.write(_CONF.format(port=self.port, sockets=self._dir, cert=cert, key=key))
        (data / "pg_hba.conf").write_text(_HBA, encoding="utf-8")
        log = (self._dir / "postgres.log").open("ab")
        self._proc = subprocess.Popen(
            [str(self._bin / "postgres"), "-D", str(data)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            user=self._runas,
            start_new_session=True,
        )
        log.close()
        self._wait_ready(timeout)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # a fast shutdown
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def log_text(self) -> str:
        path = self._dir / "postgres.log" if self._dir else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def _own(self, *paths: Path) -> None:
        if self._runas is None:
            return
        entry = pwd.getpwnam(self._runas)  # KeyError: no such user (the package makes it)
        for path in paths:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [str(self._bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            user=self._runas,
            cwd=self._dir,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                raise RuntimeError(f"postgres exited while starting:\n{self.log_text()[-2000:]}")
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
