"""Decoding and preprocessing a batch of images on the extraction device.

With CUDA, JPEGs decode on the GPU (torchvision's batched nvjpeg call), so only the compressed bytes
cross to the device, and resizing and normalizing run there too. On the CPU the very same calls run
(torchvision's decode_jpeg decodes image by image with libjpeg-turbo), which is how this module is
tested without a GPU.

What te's PIL path (`transfer_engine.data.decode.decode_image`, then `Image.convert("RGB")`) promises
holds here too:
- the pixel budget: the header is read with PIL (`Image.open` parses only the header) and an image over
  TE_MAX_IMAGE_PIXELS is refused before a pixel is decoded; decodes hold the shared pixels-in-flight
  budget, a batch split so that it never holds more than that budget at once;
- a bad file is one failure, never the batch's: when the batched call fails, the images are decoded one
  by one to find which;
- the pixels: on the CPU, torchvision gives PIL's exact pixels for baseline, progressive and grayscale
  JPEGs and for PNG (RGB, RGBA, LA, palette, grayscale, 1-bit), WebP and single-frame GIF (alpha is
  dropped, as `convert("RGB")` drops it). Where torchvision cannot decode or gives something else
  (BMP, TIFF, 16-bit PNG as uint16, animated GIF as frames, CMYK JPEGs, whose conversion nvjpeg does
  not promise to share with PIL) the image goes through te's PIL decoder, and a file that fails in
  torchvision is decoded by PIL too, so its failure reads as it does on the PIL path.
  nvjpeg on a GPU is a different JPEG decoder: its pixels are close to libjpeg-turbo's, not equal
  (docs/gpu.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from transfer_engine.data.decode import decode_tensor, max_image_pixels, pixels_in_flight, read_header

if TYPE_CHECKING:
    from transfer_engine.backbones.spec import PreprocessSpec

JPEG_MAGIC = b"\xff\xd8\xff"
# JPEG colour modes (as PIL's header reads them) that libjpeg-turbo and nvjpeg turn into PIL's RGB.
_BATCHED_JPEG_MODES = ("RGB", "L")


def decode_batch(datas: Sequence[bytes], device: torch.device) -> list[torch.Tensor | Exception]:
    """Decode encoded images to uint8 RGB [3, H, W] tensors on `device`, JPEGs in one batched call.

    Args:
        datas: the encoded files (JPEG, PNG, WebP, GIF, or anything PIL reads).
        device: where the pixels end up; on CUDA, JPEGs decode there (nvjpeg).

    Returns:
        One entry per input, in order: the tensor, or the exception that file raised (the caller
        reports it as that file's failure; the others decode regardless).
    """
    device = torch.device(device)
    out: list[torch.Tensor | Exception | None] = [None] * len(datas)
    jpegs: list[tuple[int, int]] = []  # (position, pixels)
    for i, data in enumerate(datas):
        try:
            header = read_header(data)
        except Exception as exc:  # not an image, or over the budget: this file's failure only
            out[i] = exc
            continue
        pixels = header.size[0] * header.size[1]
        if data[:3] == JPEG_MAGIC and header.format == "JPEG" and header.mode in _BATCHED_JPEG_MODES:
            jpegs.append((i, pixels))
        else:
            out[i] = _decode_on_cpu(data, device)
    for chunk in _within_budget(jpegs, 2 * max_image_pixels()):
        positions = [i for i, _ in chunk]
        decoded = _decode_jpegs([datas[i] for i in positions], [p for _, p in chunk], device)
        for i, result in zip(positions, decoded):
            out[i] = result
    return out  # type: ignore[return-value]  (every position is filled)


def _within_budget(jpegs: list[tuple[int, int]], capacity: int) -> list[list[tuple[int, int]]]:
    """Consecutive groups whose pixels fit the in-flight budget together (a group holds one image at least),
    so a batch of large photos never decodes more pixels at once than the PIL path's threads may."""
    groups: list[list[tuple[int, int]]] = []
    held = 0
    for entry in jpegs:
        if not groups or held + entry[1] > capacity:
            groups.append([])
            held = 0
        groups[-1].append(entry)
        held += entry[1]
    return groups


def _decode_jpegs(datas: list[bytes], pixels: list[int], device: torch.device) -> list[torch.Tensor | Exception]:
    """One batched decode_jpeg call; when it fails (one bad file fails the call), each image alone."""
    encoded = [_as_uint8(data) for data in datas]
    try:
        return _jpeg_call(encoded, sum(pixels), device)
    except Exception:  # which file is bad is not said: find it (them) one by one
        return [_decode_one_jpeg(*one, device) for one in zip(datas, encoded, pixels)]


def _decode_one_jpeg(data: bytes, encoded: torch.Tensor, pixels: int, device: torch.device) -> torch.Tensor | Exception:
    try:
        return _jpeg_call([encoded], pixels, device)[0]
    except Exception:  # PIL says why, in the words the PIL path would use (or decodes what nvjpeg would not)
        return _decode_on_cpu(data, device)


def _jpeg_call(encoded: list[torch.Tensor], pixels: int, device: torch.device) -> list[torch.Tensor]:
    """torchvision's decode_jpeg on a list (nvjpeg's batched decode on CUDA), within the pixels in flight."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with pixels_in_flight(pixels):
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))


def _decode_on_cpu(data: bytes, device: torch.device) -> torch.Tensor | Exception:
    """te's tensor decoder on the CPU (libjpeg-turbo or libpng through torchvision where they give PIL's
    pixels, else PIL, whose failure then reads as on the PIL path), moved to `device`: for what is not a
    batched JPEG, and for a JPEG the batched call would not decode."""
    try:
        return decode_tensor(data).to(device)
    except Exception as exc:  # a bad file is one failure, returned for the caller to report
        return exc


def _as_uint8(data: bytes) -> torch.Tensor:
    """The encoded bytes as the 1-D uint8 CPU tensor torchvision decodes from (a writable copy)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def preprocess_batch(images: Sequence[torch.Tensor], spec: "PreprocessSpec") -> torch.Tensor:
    """Resize, crop and normalize decoded images where they are: float32 [N, 3, crop, crop].

    Images of different sizes cannot share one resize call, so `spec.transform()` runs per image (on
    the images' device: on a GPU no pixel goes back to the host) and the results are stacked.

    Args:
        images: uint8 RGB [3, H, W] tensors, all on one device (`decode_batch`'s tensors).
        spec: the backbone's preprocessing (`Backbone.preprocess`).

    Returns:
        The model's input batch, on the images' device (an empty CPU batch for no images).
    """
    if not images:
        return torch.empty((0, *spec.input_size), dtype=torch.float32)
    transform = spec.transform()
    return torch.stack([transform(image) for image in images])
