"""PostgreSQL from Debian's packages, as a cluster in the project's data folder.

PostgreSQL refuses to run as root, so as root every server command runs as the ``postgres`` user.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from clm_cli.infra.process import InfraError, port_in_use, run, tail

SERVER_USER = "postgres"

# Durable as shipped (fsync, full-page writes and synchronous commit stay on), sized for the stage
# engine's write load: every batch rewrites thousands of customer rows. Fewer checkpoints mean fewer
# full-page images in the WAL, and those that remain are compressed; the buffers hold a working set
# of a few hundred thousand customers. The working set is in memory (or on SSD), so a random page
# costs about what a sequential one does: with the default cost of 4 the planner scanned whole
# tables for the consumers' batch lookups (``WHERE customer_id = ANY($1)``, a thousand ids) instead
# of using their indexes, 4-7 times slower at 40,000 customers and growing with the table.
# A managed PostgreSQL gets the same settings from its operator.
SERVER_SETTINGS = {
    "fsync": "on",
    "shared_buffers": "512MB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "15min",
    "wal_compression": "lz4",
    "random_page_cost": "1.1",
}


def _as_root() -> bool:
    return os.geteuid() == 0


def find_bin_dir() -> Path | None:
    """The newest installed server's bin folder (Debian keeps them per major version)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


def install_server() -> Path:
    """Install Debian's postgresql package when no server is installed; returns its bin folder."""
    bin_dir = find_bin_dir()
    if bin_dir:
        return bin_dir
    if not _as_root() or not shutil.which("apt-get"):
        raise InfraError("PostgreSQL is not installed: run `apt-get install postgresql` as root, then retry")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    hint = "Check that apt can reach Debian's package registry, then retry."
    run(["apt-get", "update", "-q"], what="apt-get update", hint=hint, env=env)
    run(["apt-get", "install", "-y", "-q", "postgresql"], what="installing PostgreSQL", hint=hint, env=env)
    bin_dir = find_bin_dir()
    if not bin_dir:
        raise InfraError("the postgresql package installed no server under /usr/lib/postgresql")
    return bin_dir


def _reachable_by_server_user(path: Path) -> bool:
    """Whether the postgres user can reach (traverse to) a folder."""
    if not _as_root():
        return True
    probe = subprocess.run(
        ["runuser", "-u", SERVER_USER, "--", "test", "-x", str(path)], capture_output=True, check=False
    )
    return probe.returncode == 0


@dataclass
class PostgresServer:
    """One cluster: ``data_dir/pgdata`` holds it, ``data_dir/postgres.log`` its log."""

    data_dir: Path
    port: int = 5432
    user: str = "clm"
    database: str = "clm"

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if _as_root() and not _reachable_by_server_user(self.data_dir.parent):
            # A checkout below a private folder (mode 700) cannot be entered by the postgres user.
            digest = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:12]
            self.data_dir = Path("/var/tmp/clm-postgres") / digest

    @property
    def cluster_dir(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _server_cmd(self, bin_dir: Path, tool: str, *args: str) -> list[str]:
        cmd = [str(bin_dir / tool), *args]
        return ["runuser", "-u", SERVER_USER, "--", *cmd] if _as_root() else cmd

    def install(self) -> Path:
        return install_server()

    def _init_cluster(self, bin_dir: Path) -> None:
        if (self.cluster_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _as_root():
            shutil.chown(self.data_dir, SERVER_USER, SERVER_USER)
        run(
            self._server_cmd(
                bin_dir,
                "initdb",
                "-D",
                str(self.cluster_dir),
                "--auth=trust",
                f"--username={self.user}",
                "--encoding=UTF8",
                "--no-locale",
            ),
            what="initdb",
            hint=f"Remove {self.cluster_dir} if a broken cluster is left there.",
        )

    def running(self, bin_dir: Path | None = None) -> bool:
        bin_dir = bin_dir or find_bin_dir()
        if not bin_dir or not (self.cluster_dir / "PG_VERSION").exists():
            return False
        status = subprocess.run(
            self._server_cmd(bin_dir, "pg_ctl", "status", "-D", str(self.cluster_dir)),
            capture_output=True,
            check=False,
        )
        return status.returncode == 0

    def start(self) -> bool:
        """Start the cluster (creating it first); False when it was already running."""
        bin_dir = self.install()
        self._init_cluster(bin_dir)
        if self.running(bin_dir):
            return False
        if port_in_use(self.port):
            raise InfraError(
                f"port {self.port} is taken by another program: stop it, or point CLM_DATABASE_URL at a server"
            )
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' " + " ".join(
            f"-c {name}={value}" for name, value in SERVER_SETTINGS.items()
        )
        run(
            self._server_cmd(
                bin_dir,
                "pg_ctl",
                "start",
                "-D",
                str(self.cluster_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                "60",
                "-o",
                options,
            ),
            what="starting PostgreSQL",
            hint=f"See {self.log_file}:\n{tail(self.log_file)}",
        )
        return True

    def ensure_database(self) -> None:
        asyncio.run(self._ensure_database())

    async def _ensure_database(self) -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=self.port, user=self.user, database="postgres")
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", self.database):
                await conn.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await conn.close()

    def stop(self) -> bool:
        bin_dir = find_bin_dir()
        if not bin_dir or not self.running(bin_dir):
            return False
        run(
            self._server_cmd(bin_dir, "pg_ctl", "stop", "-D", str(self.cluster_dir), "-m", "fast", "-w"),
            what="stopping PostgreSQL",
            hint=f"See {self.log_file}",
        )
        return True
