"""A throw-away PgBouncer (transaction pooling) in front of the benchmark's PostgreSQL, as a large fleet deploys it."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

INSTALL_HINT = "apt-get install pgbouncer (make bench installs it where apt-get and root are available)"


def available() -> str | None:
    """The pgbouncer executable, or None."""
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def pgbouncer(upstream_url: str, *, server_pool_size: int, query_wait_timeout_s: int = 120) -> Iterator[str]:
    """Run PgBouncer for `upstream_url`'s database and user; yields the URL that goes through it.

    Transaction pooling: a client holds a server connection only for the length of a transaction,
    so thousands of clients share `server_pool_size` PostgreSQL sessions. A client that waits longer
    than `query_wait_timeout_s` for one is disconnected with an error (PgBouncer's default: 120 s).
    """
    executable = available()
    if executable is None:
        raise RuntimeError(f"pgbouncer is not installed: {INSTALL_HINT}")
    url = sa.engine.make_url(upstream_url)
    port = _free_port()
    folder = Path(tempfile.mkdtemp(prefix="bench-pgbouncer-"))
    user = url.username or "postgres"
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "\n".join(
            [
                "[databases]",
                f"{url.database} = host={url.host or '127.0.0.1'} port={url.port or 5432} dbname={url.database}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {folder / 'users.txt'}",
                "pool_mode = transaction",
                f"default_pool_size = {server_pool_size}",
                "max_client_conn = 5000",
                f"query_wait_timeout = {int(query_wait_timeout_s)}",
                "ignore_startup_parameters = extra_float_digits",
                "log_connections = 0",
                "log_disconnections = 0",
                "",
            ]
        )
    )
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)
    # PgBouncer refuses to run as root; as root, drop to the postgres user.
    command = [executable, *(["-u", "postgres"] if os.geteuid() == 0 else []), str(folder / "pgbouncer.ini")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        through = url.set(port=port, host="127.0.0.1").render_as_string(hide_password=False)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                    raise RuntimeError(f"pgbouncer did not start: {output[-2000:]}") from None
                time.sleep(0.1)
        yield through
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(folder, ignore_errors=True)
