"""Files both wings use: writing one so that a reader sees the old file or the whole new one, also after a crash;
reading a small text file a user names without hanging on a FIFO or reading /dev/zero forever."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` (str as UTF-8) to `path` via a temporary file `.<name>.tmp-<pid>` in the same folder (created if
    missing), fsync, rename, fsync the folder. The temporary file is removed if the write fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_text(path: str | os.PathLike, limit: int | None = None) -> str:
    """The UTF-8 text of the regular file `path` (at most `limit` bytes when given). ValueError naming the file when
    it is missing or unreadable, not a regular file (a folder, a device such as /dev/zero, a FIFO: never opened),
    larger than `limit`, or not UTF-8."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path} is not a regular file ({_kind(mode)})")
        with open(path, "rb") as f:
            data = f.read() if limit is None else f.read(limit + 1)
    except OSError as e:
        raise ValueError(f"{path} cannot be read ({e.strerror or e})") from None
    if limit is not None and len(data) > limit:
        raise ValueError(f"{path} is larger than {_size(limit)}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a file")


def _size(limit: int) -> str:
    return f"{limit // 2**20} MiB" if limit % 2**20 == 0 else f"{limit} bytes"
