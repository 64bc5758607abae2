"""The operating-system account that runs the embedded PostgreSQL.

PostgreSQL's ``initdb`` and ``postgres`` reject the root account. An ordinary
user runs them as themselves. Root runs them as the system user
``omr-desktop``, created with ``useradd`` on first use. The server's files
then belong to that user and every folder above them must be searchable by it.
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from omr_desktop import resources

logger = logging.getLogger(__name__)

SERVICE_USER = "omr-desktop"

# Variables that would point libpq tools at some other server or folder.
_STRIPPED_ENV = (
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
)


class ServiceAccountError(RuntimeError):
    """The account for the embedded server cannot be used."""


@dataclass(frozen=True)
class ServiceAccount:
    """Runs commands and owns files as the server's account.

    Attributes:
        name: the user name.
        uid, gid: its ids, or ``None`` when it is the current process's own
            account (always so on Windows).
    """

    name: str
    uid: int | None = None
    gid: int | None = None

    @property
    def switches_user(self) -> bool:
        return self.uid is not None

    def run(
        self,
        args: Sequence[str | Path],
        *,
        cwd: Path,
        timeout_s: float = 120.0,
        env: Mapping[str, str] | None = None,
        new_session: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` as this account, capturing output; never raises on exit code.

        ``new_session`` detaches the command from the terminal's process
        group, so that Ctrl+C in the terminal does not reach a server it
        starts.
        """
        full_env = {
            k: v
            for k, v in resources.program_environment().items()
            if k not in _STRIPPED_ENV
        }
        full_env.update(env or {})
        extra: dict[str, object] = {}
        if self.switches_user:
            extra = {"user": self.uid, "group": self.gid, "extra_groups": []}
            full_env["HOME"] = str(cwd)
            full_env["USER"] = full_env["LOGNAME"] = self.name
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            [str(a) for a in args],
            cwd=cwd,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            start_new_session=new_session,
            **extra,
        )

    def make_owned_dir(self, path: Path, mode: int = 0o700) -> None:
        """Create ``path`` (if needed) owned by this account with ``mode``."""
        path.mkdir(parents=True, exist_ok=True)
        self.chown(path)
        path.chmod(mode)

    def chown(self, path: Path) -> None:
        """Give ``path`` to this account (no-op without a user switch)."""
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)

    def unreachable_parent(self, path: Path) -> Path | None:
        """Return the first folder above ``path`` this account cannot search.

        Only meaningful with a user switch; the current user reaching its own
        folders is checked by the operating system when the folder is made.
        """
        if not self.switches_user:
            return None
        for folder in reversed(path.resolve().parents):
            info = folder.stat()
            if info.st_uid == self.uid:
                allowed = info.st_mode & stat.S_IXUSR
            elif info.st_gid == self.gid:
                allowed = info.st_mode & stat.S_IXGRP
            else:
                allowed = info.st_mode & stat.S_IXOTH
            if not allowed:
                return folder
        return None


def service_account() -> ServiceAccount:
    """Return the account for the embedded server, creating the system user as root.

    Raises:
        ServiceAccountError: running as root and the system user cannot be
            found or created.
    """
    if sys.platform == "win32" or os.geteuid() != 0:
        return ServiceAccount(_current_user_name())
    import pwd

    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        _create_system_user()
        entry = pwd.getpwnam(SERVICE_USER)
    if entry.pw_uid == 0:
        raise ServiceAccountError(
            f"The user {SERVICE_USER!r} has uid 0; PostgreSQL cannot run as root. "
            "Give it an unprivileged uid."
        )
    return ServiceAccount(SERVICE_USER, entry.pw_uid, entry.pw_gid)


def _current_user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _create_system_user() -> None:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    nologin = next(
        (p for p in ("/usr/sbin/nologin", "/sbin/nologin") if Path(p).exists()),
        "/bin/false",
    )
    args = [
        useradd,
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        nologin,
        SERVICE_USER,
    ]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise ServiceAccountError(_useradd_failed(str(exc))) from exc
    # Exit code 9: the user appeared meanwhile (another instance made it).
    if done.returncode not in (0, 9):
        raise ServiceAccountError(_useradd_failed(done.stderr.strip()))
    logger.info("Created the system user %s for the embedded PostgreSQL", SERVICE_USER)


def _useradd_failed(detail: str) -> str:
    return (
        f"OMR Desktop runs as root, and PostgreSQL cannot, so the embedded "
        f"database needs the system user {SERVICE_USER!r}; creating it with "
        f"useradd failed: {detail}. Create that user by hand, run OMR Desktop as "
        "an ordinary user, or set OMR_DATABASE_URL to use an existing server."
    )
