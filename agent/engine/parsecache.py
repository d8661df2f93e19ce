"""Parsed rule files kept on disk, by the SHA-256 of their bytes, for the next command.

Parsing the shipped rules (libyaml, then a walk over ~12,000 nodes) is most of what a
short-lived `nodewarden scan` spends before it reads /proc; the result only depends on the
bytes of the file, so it is kept as a pickle named by their digest and read back instead.

A cache file is an input someone else might have written, and unpickling runs code, so it
is used only when nobody but root could have put it there: the agent runs as root; the
directory and every directory above it are root's and writable by nobody else (or sticky);
the file is root's, a regular file of mode 0600 with one link, opened without following
a symbolic link. Anything else is ignored, never an error: the file is parsed as before.
Even then the unpickler only builds the types a parsed file holds (`_Unpickler`).

Entries are written whole (a temporary file renamed into place) and at most MAX_ENTRIES
are kept (the oldest go first), so rule files edited all day do not fill the disk.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import pickle
import stat
import sys
from typing import Any

from agent import __version__
from agent.engine import yamlsrc

try:  # CPython's own SHA-256: hashlib loads OpenSSL first, a few ms of a short `scan`
    from _sha256 import sha256
except ImportError:  # pragma: no cover - another Python
    from hashlib import sha256

log = logging.getLogger("nodewarden")

CACHE_DIR = "/var/cache/nodewarden/rules"
MAX_ENTRIES = 256  # a shipped set is 25 files of ~15 kB pickled
# what a cached entry was made by: another Python, agent or parser is a miss
FORMAT = f"1-py{sys.version_info[0]}.{sys.version_info[1]}-{__version__}"

Parsed = tuple[Any, list[tuple[int, Any]]]  # (data, [(line, duplicate key), ...])

# module, name: every global a parsed rule file's pickle may name
_ALLOWED = {("agent.engine.yamlsrc", "Node"), ("agent.engine.yamlsrc", "Seq"),
            ("datetime", "date"), ("datetime", "datetime"), ("datetime", "timezone"),
            ("datetime", "timedelta")}


class _Unpickler(pickle.Unpickler):
    """Builds only the values YAML's safe loader makes (and our Node, Seq)."""

    def find_class(self, module: str, name: str) -> Any:
        """The class `module.name` if a parsed file may hold it; refused otherwise."""
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not in a parsed rule file")
        return super().find_class(module, name)


@functools.cache
def _parser_stamp() -> bytes:
    """The digest of the parser's own source: a changed yamlsrc.py makes every entry a miss,
    while checkouts of the same parser (another copy, an upgrade that left it as it was)
    share their entries instead of crowding each other out of MAX_ENTRIES."""
    try:
        with open(yamlsrc.__file__, "rb") as f:
            return sha256(f.read()).hexdigest().encode()
    except OSError:
        return b"?"


def _key(raw: bytes) -> str:
    return sha256(FORMAT.encode() + b"\0" + _parser_stamp() + b"\0" + raw).hexdigest()


def _root_only(path: str) -> bool:
    """`path` and every directory above it are root's and writable by root alone (a sticky
    directory above, such as /tmp, lets nobody else replace what is root's in it)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        return False
    parent = os.path.dirname(path)
    while True:
        try:
            st = os.stat(parent)
        except OSError:
            return False
        if st.st_uid != 0 or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
            return False
        if parent == os.path.dirname(parent):
            return True
        parent = os.path.dirname(parent)


class ParseCache:
    """Parsed rule files in `directory` (see the module docstring for when it is used)."""

    def __init__(self, directory: str = CACHE_DIR, max_entries: int = MAX_ENTRIES) -> None:
        self.directory = os.path.abspath(directory)
        self.max_entries = max_entries
        self._usable: bool | None = None

    def usable(self) -> bool:
        """Whether the cache may be read and written here (root, a root-only directory);
        the directory is made (0700) when missing and its parent is root's."""
        if self._usable is None:
            self._usable = os.geteuid() == 0 and self._ensure_dir()
        return self._usable

    def _ensure_dir(self) -> bool:
        if not os.path.lexists(self.directory):
            # made only below a directory nobody but root can change (a read-only root
            # filesystem, as in the chart, simply leaves the cache off)
            top = os.path.dirname(self.directory)
            while not os.path.lexists(top) and top != os.path.dirname(top):
                top = os.path.dirname(top)
            if not _root_only(top):
                return False
            with contextlib.suppress(OSError):
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
        return _root_only(self.directory)

    def get(self, raw: bytes) -> Parsed | None:
        """What parsing `raw` gave before, or None (no entry, or one not to be trusted)."""
        if not self.usable():
            return None
        path = os.path.join(self.directory, _key(raw))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_nlink != 1
                    or stat.S_IMODE(st.st_mode) & 0o177):
                return None
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read()
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            entry = _Unpickler(io.BytesIO(data)).load()
        except Exception:  # noqa: BLE001 - any damage means "parse the file"
            return None
        if (not isinstance(entry, tuple) or len(entry) != 3 or entry[0] != FORMAT
                or not isinstance(entry[2], list)):
            return None
        return entry[1], entry[2]

    def put(self, raw: bytes, parsed: Parsed) -> None:
        """Keep what parsing `raw` gave; a value pickle cannot hold is simply not kept."""
        if not self.usable():
            return
        try:
            blob = pickle.dumps((FORMAT, parsed[0], parsed[1]), protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError):
            return
        path = os.path.join(self.directory, _key(raw))
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        except OSError as e:
            log.debug("rule parse cache not written: %s", e)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return
        self._trim()

    def _trim(self) -> None:
        """Drop the oldest entries past `max_entries`."""
        try:
            with os.scandir(self.directory) as it:
                entries = [(e.stat(follow_symlinks=False).st_mtime_ns, e.path) for e in it]
        except OSError:
            return
        if len(entries) <= self.max_entries:
            return
        entries.sort()
        for _, path in entries[: len(entries) - self.max_entries]:
            with contextlib.suppress(OSError):
                os.unlink(path)


# the one cache of every rule load in this process
CACHE = ParseCache()
