"""`eyefuse sources`: what this machine can capture from."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("sources", help="list the cameras and sources that can be opened")
    p.add_argument("--no-open", action="store_true", help="only list device nodes; do not try to open them")
    p.set_defaults(run=run)


def list_sources(try_open: bool = True) -> list[tuple[str, str, str]]:
    """(spec to pass to --source, status, detail) for every source kind."""
    from capture.opencv_camera import OpenCVCamera, OpenCVCameraConfig, video_devices

    rows = [("simulated", "available", "built-in camera on scikit-image photos (add :bayer for RAW)")]
    devices = video_devices()
    for dev in devices:
        status, detail = "found", ""
        if try_open:
            cam = OpenCVCamera(OpenCVCameraConfig(device=dev))
            try:
                cam.open()
                info = cam.describe()
                status, detail = "available", f"{info.width}x{info.height} @ {info.fps:g} fps"
            except Exception as exc:  # busy / permission / not a capture node: report, don't fail
                status, detail = "cannot open", str(exc).split(". ")[0]
            finally:
                cam.close()
        rows.append((dev, status, detail))
    if not devices:
        rows.append(("0", "none found", "no /dev/video* device nodes"))
    try:
        from capture.ps3eye import probe_ps3eye

        probe = probe_ps3eye()
        rows.append(("ps3eye", probe.status, probe.detail))
    except Exception as exc:  # pyusb or libusb missing: say so, the other sources still work
        rows.append(("ps3eye", "unavailable", f"{type(exc).__name__}: {exc}"))
    rows.append(("FILE.mp4", "-", "any video file PyAV/OpenCV can decode"))
    rows.append(("'DIR/*.dng'", "-", "a DNG burst (folder or glob), played as a stream"))
    return rows


def run(args: argparse.Namespace) -> int:
    rows = list_sources(try_open=not args.no_open)
    width = max(len(r[0]) for r in rows)
    for spec, status, detail in rows:
        print(f"{spec:<{width}}  {status:<12}  {detail}")
    return 0
