"""Writing files so that a crash or a full disk never leaves a truncated file under the final name."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, flush it to disk, then rename it into place.

    Raises OSError (ENOSPC on a full disk) with nothing left under `path` or the temp name.
    Encoders that write files themselves may not check the final flush (cv2.imwrite doesn't), so
    encode to memory and write through here.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
