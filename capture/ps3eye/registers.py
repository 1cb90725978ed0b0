"""What the PS3 Eye's chips are told: OV534 bridge and OV772x sensor registers, modes, frame rates,
output formats, and the pure functions that turn settings into register values and back.

Register values are the hardware's, from the Linux kernel's gspca ov534 driver (YUYV) and
PS3EYEDriver's Bayer mode (RAW8); the grouping and names are ours. Nothing here touches USB.
"""
from __future__ import annotations

from dataclasses import dataclass

from capture.errors import SourceInvalid, SourceUnavailable
from capture.frame import PixelFormat

# -- the bridge ---------------------------------------------------------------------------------------
REG_SCCB_ADDRESS = 0xF1
REG_SCCB_SUBADDR = 0xF2
REG_SCCB_WRITE = 0xF3
REG_SCCB_READ = 0xF4
REG_SCCB_OPERATION = 0xF5
REG_SCCB_STATUS = 0xF6
REG_STREAM = 0xE0  # 0x00 streams; 0x08 / 0x09 hold the video path in reset (stopped)
REG_CAMERA_CLOCK = 0xE5
REG_INDIRECT_INDEX = 0x1C  # 0x1c selects an indirect register, 0x1d writes it and moves to the next
REG_INDIRECT_DATA = 0x1D
REG_LED_DIRECTION = 0x21  # bit 7
REG_LED_OUTPUT = 0x23  # bit 7

SCCB_OP_WRITE_3 = 0x37  # address, subaddress, data
SCCB_OP_WRITE_2 = 0x33  # address, subaddress: sets the sensor's read pointer
SCCB_OP_READ_2 = 0xF9  # address, data: the byte lands in REG_SCCB_READ
SCCB_OK, SCCB_BUSY, SCCB_NACK = 0x00, 0x03, 0x04
OV772X_SCCB_ADDRESS = 0x42

# Indirect registers 0-5 (written from index 0 in one run): V_FMT, payload size in 4-byte words
# (2 bytes), frame size limit in 4-byte words (3 bytes).
V_FMT_YUV = 0x40
V_FMT_RAW8 = 0x00

# -- the sensor (OV7720/OV7725 datasheet names) ---------------------------------------------------------
SENSOR_GAIN = 0x00
SENSOR_AECH = 0x08  # exposure, high byte
SENSOR_PID = 0x0A
SENSOR_VER = 0x0B
SENSOR_COM3 = 0x0C  # bit 6 mirror, bit 7 vertical flip
SENSOR_COM4 = 0x0D  # bits 7:6 PLL multiplier
SENSOR_AEC = 0x10  # exposure, low byte
SENSOR_CLKRC = 0x11  # clock prescaler
SENSOR_COM7 = 0x12  # bit 7 resets every register, bit 6 selects QVGA, bits 1:0 the output format
SENSOR_COM8 = 0x13  # bit 0 auto exposure, bit 1 auto white balance, bit 2 auto gain
SENSOR_AWB_CTRL0 = 0x63
SENSOR_DSP_CTRL1 = 0x64  # bit 2 gamma, 3 interpolation, 4 colour matrix, 5 YUV444->422, 6 UV adjust
SENSOR_DSP_CTRL4 = 0x67  # bits 1:0 output selection: 0 YUV/RGB, 2 RAW8, 3 RAW10

COM8_AEC, COM8_AWB, COM8_AGC = 0x01, 0x02, 0x04
COM7_YUV, COM7_PROCESSED_BAYER = 0x00, 0x01  # COM7 bits 1:0 (the kernel's ov772x driver: OFMT_*)
DSP_CTRL4_YUV, DSP_CTRL4_RAW8 = 0x00, 0x02

# The sensors the PS3 Eye is built with, by (PID << 8 | VER), as the kernel's ov772x driver knows them.
KNOWN_SENSORS = {0x7720: "OV7720", 0x7721: "OV7725"}

PAYLOAD_SIZE = 2048  # what the start sequence programs (indirect registers 1-2, in 4-byte words)


# -- modes, rates and formats ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RateSetting:
    """One frame rate and the three registers that make it (the sensor and bridge clocks)."""

    fps: int
    clkrc: int  # sensor CLKRC: input clock divider
    com4: int  # sensor COM4: PLL multiplier in bits 7:6
    camera_clock: int  # bridge 0xe5: the clock the bridge feeds the sensor


@dataclass(frozen=True)
class SensorMode:
    """A picture size and the register values that select it."""

    width: int
    height: int
    com7: int  # sensor COM7: the QVGA bit (the output format bits come from OutputFormat)
    hstart: int  # sensor HSTART
    vstart: int  # sensor VSTRT
    reg65: int  # sensor 0x65, as the kernel sets it per size
    yuyv_frame_words: int  # bridge frame size limit for YUYV in 4-byte words (the kernel's values)
    frame_rows: int  # rows per frame, blanking included: what an exposure in rows is a fraction of
    rates: tuple[RateSetting, ...]  # fastest first


@dataclass(frozen=True)
class OutputFormat:
    """One pixel format and how the sensor and bridge are set for it."""

    pixel_format: PixelFormat
    bytes_per_pixel: int
    com7: int  # sensor COM7 bits 1:0
    dsp_ctrl1: int | None  # sensor DSP_Ctrl1: which DSP stages run (None: as SENSOR_INIT leaves it)
    dsp_ctrl4: int  # sensor DSP_Ctrl4 output selection
    v_fmt: int  # bridge indirect register 0
    # Bridge writes for this input, before and after the indirect registers and after the output
    # size, in the order of the driver they come from (what 0x50 and 0x88-0x8e do is not documented).
    bridge_before: tuple[tuple[int, int], ...]
    bridge_after: tuple[tuple[int, int], ...]
    bridge_input: tuple[tuple[int, int], ...]  # 0xc2, 0xc3

    def frame_bytes(self, mode: SensorMode) -> int:
        return mode.width * mode.height * self.bytes_per_pixel

    def frame_words(self, mode: SensorMode) -> int:
        """The bridge's frame size limit, in 4-byte words."""
        if self.pixel_format is PixelFormat.YUYV:
            return mode.yuyv_frame_words
        return self.frame_bytes(mode) // 4  # PS3EYEDriver's RAW8 values are exactly one frame


YUYV = OutputFormat(PixelFormat.YUYV, 2, COM7_YUV, dsp_ctrl1=None, dsp_ctrl4=DSP_CTRL4_YUV, v_fmt=V_FMT_YUV,
                    bridge_before=((0x88, 0x00),), bridge_after=((0x8D, 0x1C), (0x8E, 0x80)),
                    bridge_input=((0xC2, 0x0C), (0xC3, 0x69)))
# Processed Bayer (COM7 01) as PS3EYEDriver's Bayer mode streams it: the mode public drivers have run
# on this camera. DSP_Ctrl1 keeps the FIFO and the defect-pixel corrections and turns gamma, colour
# matrix, interpolation and UV adjust off: the burst path needs samples linear in light, and the
# stages that make a picture belong to it. PS3EYEDriver leaves gamma on (0x87) for a displayed image.
BAYER = OutputFormat(PixelFormat.BAYER16, 1, COM7_PROCESSED_BAYER, dsp_ctrl1=0x83, dsp_ctrl4=DSP_CTRL4_RAW8,
                     v_fmt=V_FMT_RAW8,
                     bridge_before=((0x50, 0x89), (0x88, 0x08), (0x8D, 0x00), (0x8E, 0x00)), bridge_after=(),
                     bridge_input=((0xC2, 0x01), (0xC3, 0x01)))
FORMATS = {PixelFormat.YUYV: YUYV, PixelFormat.BAYER16: BAYER}

# Frame rates from the kernel's ov534 rate tables; 75 fps at 640x480 is the fastest row of
# PS3EYEDriver's extended table that its authors found to give valid video. PS3EYEDriver's Bayer
# mode uses the same rates.
_VGA_RATES = tuple(RateSetting(*row) for row in (
    (75, 0x01, 0x81, 0x02),
    (60, 0x01, 0xC1, 0x04),
    (50, 0x01, 0x41, 0x02),
    (40, 0x02, 0xC1, 0x04),
    (30, 0x04, 0x81, 0x02),
    (15, 0x03, 0x41, 0x04),
))
_QVGA_RATES = tuple(RateSetting(*row) for row in (
    (187, 0x01, 0x81, 0x02),
    (150, 0x01, 0xC1, 0x04),
    (137, 0x02, 0xC1, 0x02),
    (125, 0x02, 0x81, 0x02),
    (100, 0x02, 0xC1, 0x04),
    (75, 0x03, 0xC1, 0x04),
    (60, 0x04, 0xC1, 0x04),
    (50, 0x02, 0x41, 0x04),
    (37, 0x03, 0x41, 0x04),
    (30, 0x04, 0x41, 0x04),
))

# Rows per frame: the OV7725 datasheet's VGA timing is 510 rows of 784 pixel clocks (480 shown). A
# QVGA row is 576 pixel clocks (OpenMV's OV7725 driver), and the rate tables run QVGA 2.5x as fast as
# VGA on the same clocks, so a QVGA frame is 784 * 510 / (2.5 * 576) = 278 rows.
MODES: dict[tuple[int, int], SensorMode] = {
    (640, 480): SensorMode(640, 480, com7=0x00, hstart=0x26, vstart=0x07, reg65=0x20,
                           yuyv_frame_words=0x025800, frame_rows=510, rates=_VGA_RATES),
    (320, 240): SensorMode(320, 240, com7=0x40, hstart=0x3F, vstart=0x03, reg65=0x2F,
                           yuyv_frame_words=0x014B00, frame_rows=278, rates=_QVGA_RATES),
}


def sensor_mode(width: int, height: int) -> SensorMode:
    """The PS3 Eye mode for a size; SourceInvalid names the sizes there are."""
    try:
        return MODES[(width, height)]
    except KeyError:
        raise SourceInvalid(
            f"the PS3 Eye has no {width}x{height} mode: use 640x480 (up to {_VGA_RATES[0].fps} fps) or "
            f"320x240 (up to {_QVGA_RATES[0].fps} fps), e.g. --source ps3eye:320x240@120"
        ) from None


def output_format(pixel_format: PixelFormat) -> OutputFormat:
    """How to stream `pixel_format`; SourceInvalid names the formats there are."""
    try:
        return FORMATS[PixelFormat(pixel_format)]
    except (KeyError, ValueError):
        raise SourceInvalid(
            f"the PS3 Eye streams YUYV or raw Bayer, not {pixel_format}: use --source ps3eye (YUYV) or "
            f"ps3eye:bayer (8-bit GRBG mosaic as BAYER16)"
        ) from None


def choose_rate(mode: SensorMode, fps: float) -> RateSetting:
    """The fastest rate of `mode` not above `fps` (the slowest when `fps` is below them all)."""
    for rate in mode.rates:
        if rate.fps <= fps:
            return rate
    return mode.rates[-1]


# -- register sequences -----------------------------------------------------------------------------------
# Bridge set-up, in the kernel driver's order (register values are the hardware's, the grouping ours).
BRIDGE_INIT: tuple[tuple[int, int], ...] = (
    (0x88, 0xF8), (0x89, 0xFF), (0x76, 0x03), (0x92, 0x01), (0x93, 0x18), (0x94, 0x10), (0x95, 0x10),
    (0xE2, 0x00), (0xE7, 0x3E),
    (0x96, 0x00),
    *((0x97, v) for v in (0x20, 0x20, 0x20, 0x0A, 0x3F, 0x4A, 0x20, 0x15, 0x0B)),  # a register fed in turn
    (0x8E, 0x40), (0x1F, 0x81), (0x34, 0x05), (0xE3, 0x04), (0x89, 0x00), (0x76, 0x00), (0xE7, 0x2E),
    (0x31, 0xF9), (0x25, 0x42), (0x21, 0xF0),
    (REG_INDIRECT_INDEX, 0x0A), (REG_INDIRECT_DATA, 0x08), (REG_INDIRECT_DATA, 0x0E),  # UVC headers on
)

# Sensor set-up after its reset (OV772x). The kernel writes CLKRC ten more times right after the reset
# as a delay; we sleep instead. The window and format registers are left to the start sequence.
SENSOR_INIT: tuple[tuple[int, int], ...] = (
    (SENSOR_CLKRC, 0x01),
    (0x3D, 0x03),  # COM12
    (0x32, 0x00),  # HREF
    (0x42, 0x7F),
    (SENSOR_AWB_CTRL0, 0xAA),
    (SENSOR_DSP_CTRL1, 0xFF),
    (0x66, 0x00),  # DSP_Ctrl3
    (SENSOR_COM8, 0xF0),
    (SENSOR_COM4, 0x41),
    (0x0F, 0xC5),  # COM6
    (0x14, 0x11),  # COM9
    (0x22, 0x7F), (0x23, 0x03),  # banding filter
    (0x24, 0x40), (0x25, 0x30), (0x26, 0xA1),  # auto exposure target window
    (0x2A, 0x00), (0x2B, 0x00),  # no dummy pixels
    (0x6B, 0xAA),  # AWB_Ctrl3
    (SENSOR_COM8, 0xFF),  # every automatic control on
    # sharpness, de-noise, colour matrix, brightness, contrast
    (0x90, 0x05), (0x91, 0x01), (0x92, 0x03), (0x93, 0x00), (0x94, 0x60), (0x95, 0x3C), (0x96, 0x24),
    (0x97, 0x1E), (0x98, 0x62), (0x99, 0x80), (0x9A, 0x1E), (0x9B, 0x08), (0x9C, 0x20), (0x9E, 0x81),
    (0xA6, 0x07),  # special digital effects
    # gamma curve
    (0x7E, 0x0C), (0x7F, 0x16), (0x80, 0x2A), (0x81, 0x4E), (0x82, 0x61), (0x83, 0x6F), (0x84, 0x7B),
    (0x85, 0x86), (0x86, 0x8E), (0x87, 0x97), (0x88, 0xA4), (0x89, 0xAF), (0x8A, 0xC5), (0x8B, 0xD7),
    (0x8C, 0xE8), (0x8D, 0x20),
    (0x14, 0x41),  # COM9: gain ceiling
    (0x0E, 0xCD),  # COM5
    (0xAC, 0xBF),  # DSP auto
    (0x8E, 0x00),  # de-noise threshold
)


def bridge_start_sequence(mode: SensorMode, fmt: OutputFormat = YUYV) -> list[tuple[int, int]]:
    """Bridge writes that set input format, payload size, frame size and output size for `mode`."""
    words = PAYLOAD_SIZE // 4
    frame_words = fmt.frame_words(mode)
    return [
        *fmt.bridge_before,
        (REG_INDIRECT_INDEX, 0x00),
        (REG_INDIRECT_DATA, fmt.v_fmt),
        (REG_INDIRECT_DATA, words >> 8), (REG_INDIRECT_DATA, words & 0xFF),
        (REG_INDIRECT_DATA, frame_words >> 16), (REG_INDIRECT_DATA, (frame_words >> 8) & 0xFF),
        (REG_INDIRECT_DATA, frame_words & 0xFF),
        *fmt.bridge_after,
        (0xC0, mode.width // 8), (0xC1, mode.height // 8),  # output size, in units of 8 pixels
        *fmt.bridge_input,
    ]


def sensor_start_sequence(mode: SensorMode, fmt: OutputFormat = YUYV) -> list[tuple[int, int]]:
    """Sensor writes that select `mode`'s window, output size and `fmt`'s output format."""
    return [
        (SENSOR_COM7, mode.com7 | fmt.com7),
        (0x17, mode.hstart), (0x18, mode.width // 4),  # HSTART, HSIZE (4-pixel units)
        (0x19, mode.vstart), (0x1A, mode.height // 2),  # VSTRT, VSIZE (2-line units)
        (0x29, mode.width // 4), (0x2C, mode.height // 2),  # output width and height
        (0x65, mode.reg65),
        *(() if fmt.dsp_ctrl1 is None else ((SENSOR_DSP_CTRL1, fmt.dsp_ctrl1),)),
        (SENSOR_DSP_CTRL4, fmt.dsp_ctrl4),
    ]


# -- controls -------------------------------------------------------------------------------------------
def gain_register(gain: int) -> int:
    """Gain 0..63 -> OV772x GAIN register: bits 5:4 pick how many x2 stages (bits 7:4 of the
    register, filled from bit 4 up), bits 3:0 the fine gain."""
    return (0x00, 0x30, 0x70, 0xF0)[(gain >> 4) & 3] | (gain & 0x0F)


def exposure_registers(exposure: int) -> tuple[int, int]:
    """Exposure 0..255 -> (AECH, AEC): the sensor's 16-bit exposure, in rows, is twice the control value."""
    value = exposure << 1
    return value >> 8, value & 0xFF


def exposure_seconds(exposure: int, mode: SensorMode, fps: float) -> float:
    """How long the sensor integrates for control value `exposure` (0..255) at `fps`: its rows (at
    least one, at most a frame's, since no dummy lines are set) times the row period."""
    rows = min(max(exposure << 1, 1), mode.frame_rows)
    return rows / (fps * mode.frame_rows)


def flip_bits(com3: int, hflip: bool, vflip: bool) -> int:
    """COM3 with the mirror/flip bits for the PS3 Eye, whose sensor is mounted rotated: an upright,
    unmirrored picture needs both bits set."""
    return (com3 & ~0xC0) | (0 if hflip else 0x40) | (0 if vflip else 0x80)


def cfa_pattern(hflip: bool, vflip: bool) -> str:
    """The Bayer pattern of the frames for these flips. Upright it is GRBG (PS3EYEDriver's Bayer
    mode); reversing the readout of a 640- or 320-wide row (or of the rows) swaps the colour of the
    first column (row), since the window is not moved by a pixel to keep the order."""
    rows = ("GR", "BG")
    if hflip:
        rows = tuple(r[::-1] for r in rows)
    if vflip:
        rows = rows[::-1]
    return "".join(rows)


def identify_sensor(pid: int, ver: int, where: str) -> str:
    """The sensor's name from its ID registers, or the error that says what was found instead."""
    sensor_id = pid << 8 | ver
    if sensor_id in KNOWN_SENSORS:
        return KNOWN_SENSORS[sensor_id]
    known = " or ".join(f"{name} (0x{i:04x})" for i, name in KNOWN_SENSORS.items())
    if sensor_id in (0x0000, 0xFFFF):
        raise SourceUnavailable(
            f"the PS3 Eye's sensor on {where} gave no ID (read 0x{sensor_id:04x}); unplug and replug it")
    if pid == 0x77:
        raise SourceInvalid(
            f"the OV534 camera on {where} has an OV772x-family sensor of version 0x{ver:02x} (ID "
            f"0x{sensor_id:04x}); this driver knows {known}, whose registers it sets. If this is a PS3 Eye, "
            f"use it through the kernel driver (--source 0) and report the ID")
    if sensor_id & 0xFFF0 == 0x7670:
        raise SourceInvalid(
            f"the OV534 camera on {where} has an OV767x sensor (ID 0x{sensor_id:04x}), which sends JPEG; "
            f"this driver handles the PS3 Eye's {known} only")
    raise SourceInvalid(f"the OV534 camera on {where} has an unknown sensor (ID 0x{sensor_id:04x}); this "
                        f"driver handles the PS3 Eye's {known} only")
