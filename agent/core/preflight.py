"""Files and directories the configuration names, checked the way `run` will use them.

`massgate check` and a reload call these, so that a CA file that is missing, a directory, or
not PEM, a key that does not match its certificate, or a state directory under /proc is
refused as `file:line: path: what` before the agent depends on it, instead of ending a
running agent. The TLS context is built here, by the same function the publisher uses.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import ssl
import stat
from pathlib import Path

# The user of systemd/massgate.service; deploy/install.sh makes the configuration
# root:massgate, which is how `check`, run by root, knows whom the agent will run as.
SERVICE_USER = "massgate"
# Pseudo file systems: nothing there is storage.
PSEUDO_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))
CREDENTIALS = "${CREDENTIALS_DIRECTORY}"
MAX_SOCKET_PATH = 107  # bytes of a Unix socket path (sun_path, less its NUL)


class PreflightError(ValueError):
    """What is wrong with a named file, in the words of a message after `path:`."""


def service_user(config_file: Path) -> pwd.struct_passwd | None:
    """The user the agent will run as, when that can be known and differs from ours.

    Known when we are root and the configuration file belongs to the service's group (as
    install.sh leaves it): the unit runs the agent as that user, not as root.
    """
    if os.geteuid() != 0:
        return None
    try:
        group = grp.getgrgid(config_file.stat().st_gid).gr_name
        user = pwd.getpwnam(SERVICE_USER)
    except (KeyError, OSError):
        return None
    return user if group == SERVICE_USER else None


def _allowed(info: os.stat_result, user: pwd.struct_passwd, mode: int) -> bool:
    """Whether `user` has `mode` (a combination of R_OK/W_OK/X_OK) by the permission bits."""
    groups = {user.pw_gid, *(g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem)}
    if info.st_uid == user.pw_uid:
        bits = (info.st_mode >> 6) & 7
    elif info.st_gid in groups:
        bits = (info.st_mode >> 3) & 7
    else:
        bits = info.st_mode & 7
    return bits & mode == mode


def readable_file(path: Path, *, user: pwd.struct_passwd | None = None) -> None:
    """A regular file we (and the service user) can read; PreflightError otherwise."""
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise PreflightError(f"no such file: {path}") from None
    except OSError as exc:
        raise PreflightError(f"cannot open {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise PreflightError(f"{path} is a directory; name a file")
    if not stat.S_ISREG(info.st_mode):
        raise PreflightError(f"{path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise PreflightError(f"{path} is not readable by this user (uid {os.geteuid()})")
    if user is not None and not _allowed(info, user, os.R_OK):
        raise PreflightError(
            f"{path} is not readable by the service user '{user.pw_name}' "
            f"(mode {stat.filemode(info.st_mode)}); e.g. chgrp {user.pw_name} {path}; "
            f"chmod g+r {path}"
        )
    if info.st_size == 0:
        raise PreflightError(f"{path} is empty")


def writable_dir(path: Path, *, user: pwd.struct_passwd | None = None) -> None:
    """A directory that is, or can be made, writable storage; PreflightError otherwise."""
    try:
        _writable_dir(path, user)
    except OSError as exc:  # a name too long, a loop of links, an unreadable parent
        raise PreflightError(f"{path}: {exc.strerror or exc}") from None
    except RuntimeError as exc:  # Path.resolve on a loop of symbolic links
        raise PreflightError(f"{path}: {exc}") from None


def _writable_dir(path: Path, user: pwd.struct_passwd | None) -> None:
    resolved = path.resolve()
    for root in PSEUDO_ROOTS:
        if resolved == root or root in resolved.parents:
            raise PreflightError(
                f"{path} is under {root}, which is not storage; use e.g. /var/lib/massgate"
            )
    existing = resolved
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        what = "a file" if existing.is_file() else "not a directory"
        raise PreflightError(f"{existing} is {what}; a directory is needed here")
    if not os.access(existing, os.W_OK | os.X_OK):
        verb = "writable" if existing == resolved else f"writable, so {path} cannot be made"
        raise PreflightError(f"{existing} is not {verb} (uid {os.geteuid()})")
    if (
        user is not None
        and existing == resolved
        and not _allowed(existing.stat(), user, os.W_OK | os.X_OK)
    ):
        raise PreflightError(
            f"{path} is not writable by the service user '{user.pw_name}'; "
            f"e.g. chown {user.pw_name}: {path}"
        )


def tls_context(
    *, ca_file: Path | None, client_cert: Path | None, client_key: Path | None
) -> ssl.SSLContext:
    """Server certificate and host name verified; TLS 1.2 at least; optional client pair.

    An encrypted key is refused rather than prompted for: OpenSSL would otherwise ask on the
    terminal, and under systemd there is none.
    """
    ca = str(ca_file) if ca_file else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert is not None and client_key is not None:
        context.load_cert_chain(str(client_cert), str(client_key), password=_no_password)
    return context


def _no_password() -> bytes:
    raise PreflightError("the key is encrypted; give the key without a passphrase")


def _pem(path: Path, marker: str) -> str:
    raw = path.read_bytes()
    text = raw.decode("ascii", errors="replace")
    if f"-----BEGIN {marker}" not in text and f"{marker}-----" not in text:
        kind = "DER or another format" if b"-----BEGIN" not in raw else "PEM of another kind"
        raise PreflightError(f"{path} is not a PEM {marker.lower()} ({kind})")
    return text


def tls_problems(
    *,
    ca_file: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
    user: pwd.struct_passwd | None = None,
) -> list[tuple[str, str]]:
    """(key, message) for every TLS file that `run` could not use."""
    problems: list[tuple[str, str]] = []
    named = {"ca_file": ca_file, "client_cert": client_cert, "client_key": client_key}
    for key, path in named.items():
        if path is None:
            continue
        try:
            readable_file(path, user=user)
            if key == "ca_file":
                _pem(path, "CERTIFICATE")
                ssl.create_default_context(cafile=str(path))
            elif key == "client_cert":
                _pem(path, "CERTIFICATE")
            elif "ENCRYPTED" in _pem(path, "PRIVATE KEY"):
                raise PreflightError(
                    f"{path} is an encrypted key; the agent has nobody to ask for the "
                    "passphrase: store it unencrypted and readable only by the service"
                )
        except PreflightError as exc:
            problems.append((key, str(exc)))
        except ssl.SSLError as exc:
            problems.append((key, f"{path} holds no usable certificate ({exc.reason or exc})"))
        except OSError as exc:
            problems.append((key, f"cannot read {path}: {exc.strerror or exc}"))
    if problems or client_cert is None or client_key is None:
        return problems
    try:
        tls_context(ca_file=ca_file, client_cert=client_cert, client_key=client_key)
    except PreflightError as exc:
        problems.append(("client_key", f"{client_key}: {exc}"))
    except ssl.SSLError as exc:
        if "MISMATCH" in str(exc).upper():
            message = f"{client_key} is not the key of {client_cert}"
        else:
            message = f"{client_cert} and {client_key} do not load ({exc.reason or exc})"
        problems.append(("client_key", message))
    except OSError as exc:
        problems.append(("client_cert", f"cannot load: {exc.strerror or exc}"))
    return problems


def read_secret(*, file: Path | None, env: str | None, where: str) -> str | None:
    """A password from its environment variable or its file (None when neither is given).

    Read at every connection attempt, so a corrected file takes effect without a restart.
    Raises ValueError saying what is missing, under `where` (the section), never the secret.
    """
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise ValueError(f"{where}.password_env: the environment variable {env} is not set")
        return value
    if file is not None:
        path = credential_path(file)
        if path is None:
            raise ValueError(
                f"{where}.password_file names {CREDENTIALS}, which systemd sets only for a "
                "service with LoadCredential="
            )
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"{where}.password_file: cannot read {path}: {exc.strerror}") from None
    return None


def credential_path(path: Path) -> Path | None:
    """The file a password path names; None for a systemd credential outside the service.

    `${CREDENTIALS_DIRECTORY}` is systemd's LoadCredential= directory, known only at run time.
    """
    raw = str(path)
    if CREDENTIALS not in raw:
        return path
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory is None:
        return None
    return Path(directory) / raw.split(CREDENTIALS, 1)[1].lstrip("/")


def password_file(path: Path, *, user: pwd.struct_passwd | None = None) -> None:
    """The password file as the agent reads it at every connect; PreflightError otherwise."""
    actual = credential_path(path)
    if actual is not None:  # a credential is checked by systemd when the service starts
        readable_file(actual, user=user)


def bind_refused(host: str, port: int) -> OSError | None:
    """Why a TCP port on `host` cannot be listened on (in use, not ours), or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc
    return None


def socket_path_problem(path: Path) -> str | None:
    """Why a Unix socket cannot be made at `path`, or None: the agent replaces a socket a
    killed agent left there, but never a file or directory a person named by mistake."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        return f"{path} is longer than {MAX_SOCKET_PATH} bytes (a Unix socket path)"
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    if stat.S_ISSOCK(mode):
        return None
    what = "a directory" if stat.S_ISDIR(mode) else "a file that is not a socket"
    return f"{path} is {what}; name a path where the agent may make its socket"
