"""Writing files so that a crash or a full disk never leaves a truncated file under the final name."""
from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import threading
from pathlib import Path
from typing import Iterator

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, without changing it where the OS can say (Linux: /proc/self/status);
    elsewhere by setting and restoring it, under a lock, so no other caller here sees it changed."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode open() gives a new file: 0666 less the umask (mkstemp's files are 0600)."""
    return 0o666 & ~current_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, flush it to disk, then rename it into place.

    Raises OSError (ENOSPC on a full disk) with nothing left under `path` or the temp name.
    Encoders that write files themselves may not check the final flush (cv2.imwrite doesn't), so
    encode to memory and write through here. The file gets the mode a plain open() would give it
    (the umask honoured), not mkstemp's private 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(OSError):  # a file system without modes (vfat, some CIFS) keeps its own
                os.fchmod(f.fileno(), new_file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside `path`, with the same extension (so writers that pick
    the format by it still do); rename it to `path` with open()'s mode when the block succeeds,
    delete it when the block fails, so `path` is never half-written. For writers that must be given
    a file name (encoders, ONNX exporters, torch.save); OSError from the rename propagates."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.part{path.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written for {path}")
        with open(tmp, "rb+") as f:  # on disk before the rename, so a crash cannot leave it empty under `path`
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):
            os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # a read-only folder: nothing to clean, and no second error
            tmp.unlink(missing_ok=True)
