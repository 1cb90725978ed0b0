"""Errors a source can raise; the capture worker decides what each one means for the stream."""


class CaptureError(Exception):
    """Base class: something went wrong reading frames. The message says what and what to do."""


class SourceUnavailable(CaptureError):
    """The source cannot be opened now (no camera, busy, no permission). Worth retrying."""


class DeviceDisconnected(CaptureError):
    """An open device went away mid-stream (yanked cable). The worker retries with backoff."""


class SourceEnded(CaptureError):
    """A finite source (file, burst folder) has no more frames. Not an error for the user."""


class FrameDecodeError(CaptureError):
    """One frame could not be decoded (corrupt packet, bad file). Skip it and count it."""


class SourceInvalid(CaptureError):
    """The source can never work as given (missing file, not a video, unsupported mode). Not retried."""
