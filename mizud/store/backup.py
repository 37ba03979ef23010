"""Consistent copies of the database in the backup directory, and restores from there.

Every file lives directly in one directory (the C{backupdir} option); a name
given by a caller is a bare file name, never a path, so nothing outside that
directory is read or written.  Files are created exclusively (an existing
file is never overwritten) and readable by the daemon's user only: they hold
password hashes.

  - SQLite: the online backup API, run on the writer thread between
    transactions, so the copy is one consistent state and no write is lost
    or half copied.  A restore copies the file back the same way.
  - PostgreSQL: C{pg_dump --format=custom} of the schema mizud's tables live
    in (one snapshot), and C{pg_restore --clean --single-transaction} for a
    restore: either all of the backup is restored or nothing changes.

A backup restores only into the schema version that made it (a file of
another version is refused before anything changes).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable
from urllib.parse import unquote, urlsplit, urlunsplit

from twisted.internet.utils import getProcessOutputAndValue

from .database import Database, PostgresDatabase, SqliteDatabase
from .schema import code_version

#: A file name a caller may give: no directory part, no hidden files.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
#: Seconds a pg_dump or pg_restore may take (a process that hangs is an error, not a stuck request).
PROCESS_TIMEOUT = 3600


class BackupError(Exception):
    """The backup or restore cannot be done; the message says why (fit for an answer)."""


@dataclass(frozen=True)
class BackupFile:
    """One file in the backup directory."""

    name: str
    size: int
    modified: datetime


def postgres_tool(name: str) -> str:
    """The path of a PostgreSQL client program: on PATH, else the newest in Debian's versioned folders."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda path: int(path.split("/")[4]) if path.split("/")[4].isdigit() else 0)
    if not candidates:
        raise BackupError(f"{name} is not installed (Debian: postgresql-client)")
    return candidates[-1]


def _without_password(dsn: str) -> tuple[str, str]:
    """The URL without its password (so no process listing shows it) and the password."""
    parts = urlsplit(dsn)
    password = unquote(parts.password or "")
    if parts.password is None:
        return dsn, ""
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host)), password


class Backups:
    """Backups of one database into one directory."""

    def __init__(self, db: Database, folder: str, now: Callable[[], datetime], reactor: Any) -> None:
        self.db = db
        self.folder = folder
        self.now = now
        self.reactor = reactor

    def _folder(self) -> str:
        if not self.folder:
            raise BackupError("no backup directory: set the backupdir option")
        if not os.path.isdir(self.folder):
            raise BackupError(f"the backup directory {self.folder} does not exist")
        return self.folder

    def path_of(self, name: str) -> str:
        """The path of C{name} inside the backup directory; a name with a directory part is refused."""
        if not NAME.match(name):
            raise BackupError("a backup is named by a file name in the backup directory (letters, digits, . _ -)")
        return os.path.join(self._folder(), name)

    def listing(self) -> list[BackupFile]:
        """The files in the backup directory, newest first."""
        folder = self._folder()
        files = []
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if NAME.match(name) and os.path.isfile(path):
                stat = os.stat(path)
                files.append(BackupFile(name, stat.st_size, datetime.fromtimestamp(int(stat.st_mtime))))
        return sorted(files, key=lambda f: (f.modified, f.name), reverse=True)

    def default_name(self) -> str:
        """mizud-ENGINE-YYYYMMDD-HHMMSS.sqlite or .dump."""
        suffix = "sqlite" if isinstance(self.db, SqliteDatabase) else "dump"
        return f"mizud-{self.db.engine.name}-{self.now():%Y%m%d-%H%M%S}.{suffix}"

    async def backup(self, name: str = "") -> str:
        """Write a consistent copy to C{name} (or a dated name); the file's path."""
        path = self.path_of(name or self.default_name())
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise BackupError(f"{os.path.basename(path)} exists already; a backup never overwrites") from None
        except OSError as problem:
            raise BackupError(f"cannot create {path}: {problem.strerror}") from None
        try:
            if isinstance(self.db, SqliteDatabase):
                await self.db.run_exclusive("backup", lambda connection: _sqlite_copy(connection, path))
            elif isinstance(self.db, PostgresDatabase):
                await self._pg_dump(path)
            else:
                raise BackupError(f"no backup for {self.db.engine.name}")
        except BaseException:
            os.unlink(path)
            raise
        return path

    async def restore(self, name: str) -> str:
        """Replace the database's content by the backup C{name}; its path."""
        path = self.path_of(name)
        if os.path.islink(path):
            raise BackupError(f"{name} is a symbolic link; a restore reads only files of the backup directory")
        if not os.path.isfile(path):
            raise BackupError(f"no backup named {name} in the backup directory")
        if isinstance(self.db, SqliteDatabase):
            # On the writer thread: checking a large file must not hold up the reactor.
            await self.db.run_exclusive("restore", lambda connection: self._sqlite_restore(path, name, connection))
        elif isinstance(self.db, PostgresDatabase):
            self._check_version(await self._pg_version(path), name)
            await self._run(postgres_tool("pg_restore"), "--clean", "--if-exists", "--single-transaction",
                            "--exit-on-error", "--no-owner", path)
        else:
            raise BackupError(f"no restore for {self.db.engine.name}")
        return path

    def _sqlite_restore(self, path: str, name: str, connection: sqlite3.Connection) -> None:
        """Check the file, then copy it over the live database, on one read-only connection to it."""
        try:
            source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        except sqlite3.Error as problem:
            raise BackupError(f"{name} is not a mizud backup ({problem})") from None
        try:
            self._check_version(_sqlite_version(source, name), name)
            source.backup(connection)
        finally:
            source.close()

    def _check_version(self, version: int, name: str) -> None:
        wanted = code_version(self.db.engine)
        if version != wanted:
            raise BackupError(f"{name} holds schema version {version}; this mizud restores only version {wanted}")

    # -- PostgreSQL ----------------------------------------------------------------

    async def _schema(self) -> str:
        return str((await self.db.run_query("backup_schema", "SELECT current_schema()")).rows[0][0])

    async def _pg_dump(self, path: str) -> None:
        await self._run(postgres_tool("pg_dump"), "--format=custom", f"--schema={await self._schema()}",
                        f"--file={path}")

    async def _pg_version(self, path: str) -> int:
        """The newest version in the dump's tb_schema_version (read with pg_restore, nothing restored)."""
        listing = await self._run(postgres_tool("pg_restore"), "--data-only", "--table=tb_schema_version",
                                  "--file=-", path, connect=False)
        versions, copying = [], False
        for line in listing.splitlines():
            if line.startswith("COPY "):
                copying = True
            elif line == "\\.":
                copying = False
            elif copying and line.split("\t")[0].isdigit():
                versions.append(int(line.split("\t")[0]))
        if not versions:
            raise BackupError(f"{os.path.basename(path)} is not a mizud backup (no tb_schema_version)")
        return max(versions)

    async def _run(self, program: str, *args: str, connect: bool = True) -> str:
        assert isinstance(self.db, PostgresDatabase)
        url, password = _without_password(self.db.dsn)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        if password:
            env["PGPASSWORD"] = password
        argv = [f"--dbname={url}", *args] if connect else list(args)
        d = getProcessOutputAndValue(program, argv, env=env, reactor=self.reactor)
        d.addTimeout(PROCESS_TIMEOUT, self.reactor)
        out, err, code = await d
        if code != 0:
            first = (err.decode("utf-8", "replace").strip().splitlines() or [f"exit status {code}"])[0]
            raise BackupError(f"{os.path.basename(program)} failed: {first[:300]}")
        return str(out.decode("utf-8", "replace"))


def _sqlite_copy(connection: sqlite3.Connection, path: str) -> None:
    target = sqlite3.connect(path, isolation_level=None)
    try:
        connection.backup(target)
        # One self-contained file (the copy's header says WAL like its source's).
        target.execute("PRAGMA journal_mode = DELETE")
    finally:
        target.close()


def _sqlite_version(source: sqlite3.Connection, name: str) -> int:
    """The schema version of an intact backup open on C{source}."""
    try:
        check = source.execute("PRAGMA quick_check").fetchone()
        if not check or check[0] != "ok":
            raise BackupError(f"{name} is damaged ({check[0] if check else 'no answer'})")
        row = source.execute("SELECT max(version) FROM tb_schema_version").fetchone()
    except sqlite3.Error as problem:
        raise BackupError(f"{name} is not a mizud backup ({problem})") from None
    return int(row[0] or 0)
