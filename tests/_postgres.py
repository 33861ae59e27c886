"""A throwaway PostgreSQL cluster for the tests (tests/test_search_postgres.py). Not a test module.

:func:`start_cluster` runs ``initdb -A trust`` in a new temporary folder, starts the server with
``pg_ctl`` on 127.0.0.1 at a free port (its Unix socket in the same folder) and returns a
:class:`Cluster`; ``Cluster.stop`` (``pg_ctl stop -m immediate``) and ``Cluster.remove`` end it. The
binaries come from ``$CARCLF_PG_BIN`` (only there when it is set), else the newest
``/usr/lib/postgresql/*/bin``, else ``PATH``; when none is found, :class:`MissingPostgres` says what to
install (the tests fail, they do not skip).

PostgreSQL refuses to run as root, so as root (CI) the server runs as the ``postgres`` user (else
``nobody``): the folder is made with :func:`tempfile.mkdtemp` under the system's temporary folder,
which that user can reach (pytest's ``tmp_path`` is private to root) and which keeps the socket's
path short.
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "postgres"


class MissingPostgres(RuntimeError):
    pass


def bin_dir() -> Path:
    env = os.environ.get("CARCLF_PG_BIN")
    if env:
        candidates = [env]
    else:
        versions = [p for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p).parent.name.isdigit()]
        candidates = sorted(versions, key=lambda p: int(Path(p).parent.name), reverse=True)
        which = shutil.which("pg_ctl")
        if which:
            candidates.append(str(Path(which).parent))
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    raise MissingPostgres(
        "PostgreSQL's initdb and pg_ctl were not found (looked in $CARCLF_PG_BIN, /usr/lib/postgresql/*/bin "
        "and PATH): install the server (Debian: apt-get install postgresql) or set CARCLF_PG_BIN to its bin folder"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user():
    """(uid, gid) to run the server as: None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise MissingPostgres("running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")


class Cluster:
    def __init__(self, folder: Path, bin: Path, port: int, user):
        self.folder, self.bin, self.port, self.user = folder, bin, port, user
        self.data, self.log = folder / "data", folder / "server.log"

    def url(self, database: str, user: str = SUPERUSER, host: str = "127.0.0.1", port: int | None = None) -> str:
        return f"postgresql+psycopg2://{user}@{host}:{port or self.port}/{database}"

    def _run(self, *args, check=True, timeout=120):
        kwargs = {}
        if self.user is not None:
            kwargs = {"user": self.user[0], "group": self.user[1], "extra_groups": []}
        proc = subprocess.run(
            [str(self.bin / args[0]), *map(str, args[1:])],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.folder,
            **kwargs,
        )
        if check and proc.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.is_file() else ""
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}\nserver log:\n{log}")
        return proc

    def init(self):
        self._run("initdb", "-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--no-sync", "-D", self.data)

    def start(self):
        options = f"-k {self.folder} -h 127.0.0.1 -p {self.port} -F -c max_connections=50 -c shared_buffers=16MB"
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", self.data, "-l", self.log, "-o", options)

    def stop(self, check=False):
        return self._run("pg_ctl", "stop", "-m", "immediate", "-w", "-D", self.data, check=check)

    def running(self) -> bool:
        return self._run("pg_ctl", "status", "-D", self.data, check=False).returncode == 0

    def createdb(self, name: str):
        self._run("createdb", "-h", "127.0.0.1", "-p", self.port, "-U", SUPERUSER, name)

    def remove(self):
        if self.running():
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_cluster() -> Cluster:
    bin = bin_dir()
    user = _server_user()
    folder = Path(tempfile.mkdtemp(prefix="carclf-pg-"))
    if user is not None:
        os.chown(folder, *user)
    cluster = Cluster(folder, bin, free_port(), user)
    try:
        cluster.init()
        cluster.start()
    except BaseException:
        cluster.remove()
        raise
    return cluster
