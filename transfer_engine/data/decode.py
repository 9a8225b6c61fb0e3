"""Decoding an image within a pixel budget: a decompression bomb is a skipped file, never an exhausted memory.

A PNG of 17.5 KB can declare 12000 x 12000 pixels and decode to ~700 MB. The size is in the header, so
`decode_image` reads it (PIL's `Image.open` parses only the header) and refuses an image over the
per-image budget before a single pixel is decoded. PIL's own guard is set to the same budget and its
DecompressionBombWarning becomes an error, so PIL never decodes past it either (the warning alone let
the decode go on).

Concurrent decodes (te extract's decode threads) share a second budget, `pixels in flight`: a decode
waits until the pixels it needs fit, so `workers` large images never decode at once. Each image fits
on its own (the per-image budget is at most the shared one), so a decode always proceeds eventually.

Settings: TE_MAX_IMAGE_PIXELS (default PIL's own 89,478,485, about 9459 x 9459) per image; twice that
in flight (about 1.5 GB of decoded pixels in the worst case).
"""

from __future__ import annotations

import io
import re
import threading
import warnings
from contextlib import contextmanager
from typing import Iterator

from transfer_engine.data.files import env_limit
from transfer_engine.errors import TEError

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # PIL's Image.MAX_IMAGE_PIXELS default: the threshold it warns at


class ImageTooLargeError(TEError, ValueError):
    """The image declares more pixels than te decodes (TE_MAX_IMAGE_PIXELS).

    Where files are skipped (te extract, te predict, te export's checks) it is one skipped file; a
    command that does not skip files (te finetune) ends with this one line, never an internal error.
    """


def max_image_pixels() -> int:
    """Pixels one image may have (TE_MAX_IMAGE_PIXELS, default 89,478,485)."""
    return env_limit("TE_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS)


class _PixelsInFlight:
    """A counting budget of pixels shared by the threads that decode at the same time."""

    def __init__(self) -> None:
        self._used = 0
        self._free = threading.Condition()

    @contextmanager
    def held(self, pixels: int, capacity: int) -> Iterator[None]:
        pixels = min(pixels, capacity)  # an image within the per-image budget always fits alone
        with self._free:
            self._free.wait_for(lambda: self._used + pixels <= capacity)
            self._used += pixels
        try:
            yield
        finally:
            with self._free:
                self._used -= pixels
                self._free.notify_all()


_IN_FLIGHT = _PixelsInFlight()
_GUARD_LOCK = threading.Lock()
_guarded_at: int | None = None


def _guard_pil(budget: int) -> None:
    """Make PIL refuse what te refuses: its bomb limit at te's budget, and its warning an error (once per budget)."""
    global _guarded_at
    from PIL import Image

    with _GUARD_LOCK:
        if _guarded_at == budget:
            return
        Image.MAX_IMAGE_PIXELS = budget
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
        _guarded_at = budget


def read_header(data: bytes):
    """The image's PIL header (size, mode, format; no pixel decoded yet), refused when over te's budget.

    Raises:
        ImageTooLargeError: it declares more than `max_image_pixels()` pixels.
        Exception: whatever PIL raises for a file that is not an image.
    """
    from PIL import Image

    budget = max_image_pixels()
    _guard_pil(budget)
    try:
        image = Image.open(io.BytesIO(data))  # the header only: size and mode, no pixels yet
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(_over_budget(_declared_pixels(exc), budget)) from None
    width, height = image.size
    if width * height > budget:
        raise ImageTooLargeError(_over_budget(width * height, budget, f"{width}x{height} = "))
    return image


def pixels_in_flight(pixels: int):
    """Hold `pixels` of the budget shared by the decodes running at once (a context manager)."""
    return _IN_FLIGHT.held(pixels, 2 * max_image_pixels())


def decode_image(data: bytes):
    """An RGB PIL image from encoded bytes, within te's pixel budgets.

    Raises:
        ImageTooLargeError: the image declares more than `max_image_pixels()` pixels (nothing decoded).
        Exception: whatever PIL raises for a truncated or non-image file (the caller skips the file).
    """
    return _rgb(read_header(data))


def _rgb(image):
    """The opened image (`read_header`'s) decoded now, within the pixels in flight, as RGB."""
    with pixels_in_flight(image.size[0] * image.size[1]):
        image.load()  # decode now: a truncated file fails here, not later in a worker
        return image.convert("RGB")


# Formats and modes torchvision.io decodes to the very pixels PIL's `convert("RGB")` gives (both use
# libjpeg-turbo and libpng): an RGB or grayscale JPEG, an 8-bit RGB or grayscale PNG. Anything else (CMYK,
# palettes, alpha, 16 bits, other formats) is decoded by PIL, whose conversion is te's reference.
_TORCHVISION_DECODES = {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L")}


def decode_tensor(data: bytes):
    """The image as a uint8 RGB tensor [3, H, W], within te's pixel budgets: the pixels of `decode_image`.

    What the "torch" resampler resizes (`PreprocessSpec.resampler`): torchvision.io decodes JPEG and PNG
    straight into a tensor, where a PIL image would cost a full-size copy more (a large share of the
    decode's own time on camera-sized photos: docs/extract.md). Raises as `decode_image` does.
    """
    import torch

    header = read_header(data)
    width, height = header.size
    if (header.format, header.mode) in _TORCHVISION_DECODES:
        from torchvision.io import ImageReadMode, decode_image as tv_decode

        with pixels_in_flight(width * height):
            try:
                pixels = tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            except RuntimeError:  # what libjpeg refuses (a truncated file): PIL says why, below
                pixels = None
        if pixels is not None and pixels.dtype == torch.uint8 and tuple(pixels.shape[1:]) == (height, width):
            return pixels
    from torchvision.transforms.v2.functional import pil_to_tensor

    return pil_to_tensor(_rgb(header))  # the header already read: PIL decodes from it


def _declared_pixels(exc: Exception) -> int | None:
    """The pixel count in PIL's bomb message ("Image size (144000000 pixels) exceeds limit of ...")."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return int(found.group(1)) if found else None


def _over_budget(pixels: int | None, budget: int, size: str = "") -> str:
    what = f"{size}{pixels / 1e6:.1f} megapixels" if pixels else "too many pixels"
    return (f"the image declares {what}, over te's budget of {budget / 1e6:.1f} megapixels per image "
            "(a decompression bomb, or a very large image: set TE_MAX_IMAGE_PIXELS to raise the budget)")
