"""capture/atomic.py: a file written atomically gets the mode open() would give it (the umask's)."""
import os
import stat

import pytest

from capture.atomic import atomic_write_bytes, current_umask, new_file_mode


@pytest.fixture
def umask():
    saved = os.umask(0o022)
    os.umask(saved)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(saved)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_an_atomic_write_honours_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    assert current_umask() == mask and new_file_mode() == mode
    atomic_write_bytes(tmp_path / "out.bin", b"x")
    assert stat.S_IMODE((tmp_path / "out.bin").stat().st_mode) == mode
    # and what the commands write goes through it: a DNG, here
    from capture.dng import write_dng
    from tests.burst_data import burst
    from capture.burst_synthesis import burst_frames

    write_dng(tmp_path / "f.dng", burst_frames(burst(1, size=(32, 32)))[0])
    assert stat.S_IMODE((tmp_path / "f.dng").stat().st_mode) == mode


def test_atomic_output_renames_on_success_and_leaves_nothing_on_failure(tmp_path, umask):
    from capture.atomic import atomic_output

    umask(0o022)
    with atomic_output(tmp_path / "model.onnx") as tmp:
        assert tmp.suffix == ".onnx" and tmp.parent == tmp_path and tmp.name.startswith(".")
        tmp.write_bytes(b"graph")
    assert (tmp_path / "model.onnx").read_bytes() == b"graph"
    assert stat.S_IMODE((tmp_path / "model.onnx").stat().st_mode) == 0o644
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "other.onnx") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("the exporter failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_output(tmp_path / "empty.onnx"):
            pass
