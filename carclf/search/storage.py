"""Where an Optuna study lives: the default SQLite file, or a database that workers share (docs/search.md).

:func:`open_storage` checks the database before anything else (one connection with a short timeout: a URL
that cannot be reached is a one-line :class:`~carclf.settings.SettingsError` naming it and what to do),
holds a set-up lock while the tables and the study are made (a file lock for SQLite, an advisory lock for
PostgreSQL), and gives the :class:`optuna.storages.RDBStorage` with the heartbeat of running trials.
:func:`lost_server` turns a server lost mid-search into one :class:`DatabaseLostError` line.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from carclf.search.objective import folder_lock
from carclf.settings import SettingsError

log = logging.getLogger("carclf.search")

__all__ = ["DatabaseLostError", "lost_server", "open_storage", "redact"]

#: SQLite busy timeout (seconds): a writer waits this long for another's lock.
SQLITE_TIMEOUT = 60
#: Seconds a connection to a database server may take before it counts as unreachable.
CONNECT_TIMEOUT = 10
#: The PostgreSQL advisory lock held while a worker creates the tables and the study ("carclf" in ASCII).
SETUP_LOCK_KEY = 0x636172636C66

#: The package to install for a missing database driver module.
DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "pymysql": "pymysql"}

_DEFAULT_HINT = "(SQLite is the default: leave storage unset)"


class DatabaseLostError(RuntimeError):
    """The database server of the study went away mid-search; the search resumes from it when it is back."""


def redact(url: str) -> str:
    """The URL with its password shown as ``***``."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def enable_wal(path: Path) -> None:
    """Put the SQLite file in WAL mode (persistent): readers never block the writer, writers queue."""
    import sqlite3

    con = sqlite3.connect(str(path), timeout=SQLITE_TIMEOUT)
    try:
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    finally:
        con.close()
    if str(mode).lower() != "wal":
        log.warning("%s: SQLite would not switch to WAL mode (%s); parallel workers may wait longer", path, mode)


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for another database, or SQLite in memory)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///") :])
    return None


def driver_url(url: str) -> str:
    """``url`` with PostgreSQL's driver named: a bare ``postgresql://`` gets psycopg2 (in requirements.txt;
    SQLAlchemy 2.1 would pick psycopg 3)."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg2://" + url[len(bare) :]
    return url


def _engine_kwargs(url: str) -> dict:
    from sqlalchemy.engine import make_url

    if sqlite_file(url) is not None:
        return {"connect_args": {"timeout": SQLITE_TIMEOUT}}
    kwargs = {"pool_pre_ping": True}  # a server restarted mid-search: the pool reconnects instead of failing
    parsed = make_url(url)
    if parsed.get_backend_name() in ("postgresql", "mysql") and "connect_timeout" not in parsed.query:
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    return kwargs


def _reason(exc: BaseException) -> str:
    """A few words for why a database could not be used, from the driver's message."""
    text = " ".join(str(getattr(exc, "orig", None) or exc).split())
    low = text.lower()
    for needles, reason in (
        (("connection refused",), "connection refused"),
        (("no such file or directory",), "no server on that socket"),
        (("could not translate host name", "name or service not known", "nodename nor servname"), "unknown host"),
        (("timeout expired", "timed out"), f"no answer within {CONNECT_TIMEOUT} s"),
        (("password authentication failed", "no password supplied", "authentication failed"), "bad credentials"),
        (("no pg_hba.conf entry",), "this host is not allowed in the server's pg_hba.conf"),
        (("server closed the connection", "terminating connection", "connection already closed"), "connection lost"),
        (("could not receive data", "could not send data", "ssl syscall error", "eof detected"), "connection lost"),
        (("the database system is shutting down", "the database system is starting up"), "server not ready"),
    ):
        if any(n in low for n in needles):
            return reason
    if "role" in low and "does not exist" in low:
        return "bad credentials: no such role"
    if "database" in low and "does not exist" in low:
        return "no such database"
    return text[:200] or type(exc).__name__


def _what_to_do(reason: str) -> str:
    if reason == "no such database":
        return f"create it (createdb), or fix the URL {_DEFAULT_HINT}"
    if reason.startswith("bad credentials") or "pg_hba" in reason:
        return f"fix the user or password in the URL, or the server's access rules {_DEFAULT_HINT}"
    return f"start the server, or fix the URL {_DEFAULT_HINT}"


def _unreachable(url: str, exc: BaseException) -> SettingsError:
    import sqlalchemy.exc as sa_exc

    shown = f"search.optuna.storage {redact(url)!r}"
    if isinstance(exc, ImportError):
        module = (getattr(exc, "name", None) or "").split(".")[0] or "its driver"
        package = DRIVER_PACKAGES.get(module, module)
        return SettingsError(
            f"{shown} needs the database driver {module}, which is not installed: pip install {package}"
        )
    if isinstance(exc, sa_exc.ArgumentError):
        return SettingsError(
            f"{shown} is not a database URL ({' '.join(str(exc).split())[:120]}): "
            f"give e.g. postgresql+psycopg2://user@host:5432/carclf {_DEFAULT_HINT}"
        )
    reason = _reason(exc)
    return SettingsError(f"{shown} cannot be reached ({reason}): {_what_to_do(reason)}")


def _check_reachable(url: str):
    """Connect once (a short timeout); return the open connection, or raise the one-line SettingsError."""
    import sqlalchemy
    import sqlalchemy.exc as sa_exc
    from sqlalchemy.pool import NullPool

    try:
        engine = sqlalchemy.create_engine(driver_url(url), poolclass=NullPool, **_engine_kwargs(driver_url(url)))
        connection = engine.connect()
    except (ImportError, sa_exc.ArgumentError, sa_exc.DBAPIError) as exc:
        raise _unreachable(url, exc) from None
    return engine, connection


@contextlib.contextmanager
def _setup_lock(url: str, connection):
    """One process at a time creates the tables and the study (no database here has safe concurrent DDL)."""
    path = sqlite_file(url)
    if path is not None:
        with folder_lock(path.parent, "the study set-up", blocking=True):
            yield
    elif connection.dialect.name == "postgresql":
        import sqlalchemy

        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": SETUP_LOCK_KEY})
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a lost connection releases the lock too
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": SETUP_LOCK_KEY})
    else:
        yield


def _storage_class():
    import optuna

    class Storage(optuna.storages.RDBStorage):
        """RDBStorage whose heartbeat thread outlives a database outage.

        Optuna's thread dies at the first failed heartbeat (a traceback on stderr) and the trial then goes
        stale while it still trains; this one logs one warning and goes on, so a server back within the
        grace period keeps the trial alive. The trial's own next write fails if the server is still gone.
        """

        _heartbeat_failing = False
        shown_url = None  # the URL as the settings give it (its driver may be implicit)

        def record_heartbeat(self, trial_id: int) -> None:
            try:
                super().record_heartbeat(trial_id)
            except Exception as exc:
                if not self._heartbeat_failing:
                    log.warning("%s: a heartbeat could not be recorded (%s)", redact(self.url), _reason(_cause(exc)))
                self._heartbeat_failing = True
            else:
                self._heartbeat_failing = False

    return Storage


@contextlib.contextmanager
def open_storage(storage: str | None, default_file: Path, heartbeat_interval, grace_period, max_retry):
    """The study's storage, with the set-up lock held until the ``with`` body (creating the study) is done.

    ``storage``: the ``search.optuna.storage`` URL, or None for SQLite at ``default_file``. An unreachable
    database raises :class:`~carclf.settings.SettingsError` (one line) before anything is made.
    """
    import optuna

    url = storage if storage is not None else f"sqlite:///{default_file}"
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine, connection = _check_reachable(url)
    try:
        with _setup_lock(url, connection), lost_server(url):
            if path is not None:
                enable_wal(path)
            rdb = _storage_class()(
                driver_url(url),
                engine_kwargs=_engine_kwargs(driver_url(url)),
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
            )
            rdb.shown_url = url
            try:
                yield rdb
            except BaseException:
                rdb.remove_session()
                rdb.engine.dispose()
                raise
    finally:
        with contextlib.suppress(Exception):
            connection.close()
        engine.dispose()


def _cause(exc: BaseException) -> BaseException:
    """The database error behind ``exc`` (Optuna wraps SQLAlchemy's in StorageInternalError), else ``exc``."""
    import sqlalchemy.exc as sa_exc

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sa_exc.DBAPIError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return exc


def _is_disconnect(exc: BaseException) -> bool:
    import sqlalchemy.exc as sa_exc

    cause = _cause(exc)
    return isinstance(cause, sa_exc.DBAPIError) and (
        cause.connection_invalidated or isinstance(cause, (sa_exc.OperationalError, sa_exc.InterfaceError))
    )


@contextlib.contextmanager
def lost_server(storage):
    """Within it, a database server lost (not a SQLite file) raises one :class:`DatabaseLostError` line.

    ``storage``: the URL or the RDBStorage. The running trial stays RUNNING in the database; when the
    server is back, the same search fails it as stale (after the grace period) and retries it.
    """
    url = storage if isinstance(storage, str) else (getattr(storage, "shown_url", None) or storage.url)
    try:
        yield
    except (SettingsError, DatabaseLostError):
        raise
    except Exception as exc:
        if sqlite_file(url) is not None or url.startswith("sqlite:") or not _is_disconnect(exc):
            raise
        log.debug("the database error behind the lost server", exc_info=exc)
        raise DatabaseLostError(
            f"search.optuna.storage {redact(url)!r}: the database server was lost mid-search "
            f"({_reason(_cause(exc))}) and this worker's running trial failed; when the server is back, run the "
            "same search again: it resumes from the database and retries the interrupted trial"
        ) from None  # one line, not the driver's pages of chained tracebacks (logged at DEBUG level)
