"""The embedded renderer's edits: real image operations with Pillow, offline.

    edit / inpaint     with a mask: the prompt's composition (``local.compose``) painted where the
                       mask is transparent (alpha 0), the image's pixels kept where it is opaque
                       (partial alpha blends); without a mask: the composition laid over the
                       whole image at a third of its opacity
    upscale            Lanczos resampling, by ``upscale_factor`` (default 2) or to ``size``
    outpaint           a larger canvas (``expand_factor``, default 1.5, or ``size``) painted with
                       the prompt's composition, the image in its middle
    reframe            the same canvas filled with the image itself, stretched and blurred
    mix                the images resized to the output and averaged, the composition over them
    remove_background  pixels close to the colour of the image's corners made transparent

The output is the first image's size unless ``size`` (or the operation's factor) says otherwise.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from PIL import Image, ImageChops, ImageFilter, ImageOps

from mesh_images_asgi._core.errors import InvalidRequest
from mesh_images_asgi._domain.catalog import parse_wxh
from mesh_images_asgi._domain.edit_inputs import EditInputs
from mesh_images_asgi._domain.jobs import GenerationJob

__all__ = ["Painting", "edit_image", "edit_size"]

Painting = Callable[[int, int], Image.Image]
"""Paints the prompt's composition at a width and height (the renderer's ``compose``)."""

_DEFAULT_UPSCALE = 2.0
_DEFAULT_EXPAND = 1.5
_OVERLAY_OPACITY = 1 / 3
_BACKGROUND_TOLERANCE = 48


def _open(data: bytes) -> Image.Image:
    """An input as RGBA; one that does not decode after all is the client's 400, not our 500."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return ImageOps.exif_transpose(image).convert("RGBA")
    except (OSError, SyntaxError, ValueError):
        raise InvalidRequest("An input image is damaged or truncated.", param="image") from None


def edit_size(job: GenerationJob) -> tuple[int, int]:
    """The output size of ``job``'s edit."""
    inputs = job.inputs
    assert inputs is not None
    wxh = parse_wxh(job.size or "")
    if wxh is not None:
        return wxh
    width, height = inputs.first.width, inputs.first.height
    factor = 1.0
    if inputs.operation == "upscale":
        factor = inputs.upscale_factor or _DEFAULT_UPSCALE
    elif inputs.operation in ("outpaint", "reframe"):
        factor = inputs.expand_factor or _DEFAULT_EXPAND
    return max(1, round(width * factor)), max(1, round(height * factor))


def edit_image(job: GenerationJob, painting: Painting) -> Image.Image:
    """The result of ``job``'s edit, painting what the prompt adds with ``painting``."""
    inputs = job.inputs
    assert inputs is not None
    return _OPERATIONS[inputs.operation](inputs, edit_size(job), painting)


def _edit(inputs: EditInputs, size: tuple[int, int], painting: Painting) -> Image.Image:
    image = _open(inputs.first.data).resize(size, Image.Resampling.LANCZOS)
    painted = painting(*size).convert("RGBA")
    if inputs.mask is None:
        return Image.blend(image, painted, _OVERLAY_OPACITY)
    keep = _open(inputs.mask.data).getchannel("A").resize(size, Image.Resampling.NEAREST)
    return Image.composite(image, painted, keep)


def _upscale(inputs: EditInputs, size: tuple[int, int], painting: Painting) -> Image.Image:
    return _open(inputs.first.data).resize(size, Image.Resampling.LANCZOS)


def _canvas(inputs: EditInputs, size: tuple[int, int], background: Image.Image) -> Image.Image:
    """``background`` with the first image, scaled down to fit if needed, in its middle."""
    image = _open(inputs.first.data)
    image.thumbnail(size, Image.Resampling.LANCZOS)
    canvas = background.resize(size).convert("RGBA")
    offset = ((size[0] - image.width) // 2, (size[1] - image.height) // 2)
    canvas.alpha_composite(image, offset)
    return canvas


def _outpaint(inputs: EditInputs, size: tuple[int, int], painting: Painting) -> Image.Image:
    return _canvas(inputs, size, painting(*size))


def _reframe(inputs: EditInputs, size: tuple[int, int], painting: Painting) -> Image.Image:
    stretched = _open(inputs.first.data).resize(size, Image.Resampling.BILINEAR)
    return _canvas(inputs, size, stretched.filter(ImageFilter.GaussianBlur(max(size) / 40)))


def _mix(inputs: EditInputs, size: tuple[int, int], painting: Painting) -> Image.Image:
    mixed = _open(inputs.images[0].data).resize(size, Image.Resampling.LANCZOS)
    for count, item in enumerate(inputs.images[1:], start=2):
        other = _open(item.data).resize(size, Image.Resampling.LANCZOS)
        mixed = Image.blend(mixed, other, 1 / count)  # a running mean: each image weighs the same
    return Image.blend(mixed, painting(*size).convert("RGBA"), _OVERLAY_OPACITY)


def _remove_background(
    inputs: EditInputs, size: tuple[int, int], painting: Painting
) -> Image.Image:
    image = _open(inputs.first.data).resize(size, Image.Resampling.LANCZOS)
    width, height = image.size
    corners = [image.getpixel(xy) for xy in ((0, 0), (width - 1, 0), (0, height - 1))]
    background = tuple(sorted(channel)[1] for channel in zip(*corners, strict=True))
    plain = Image.new("RGBA", image.size, background)
    distance = ImageChops.difference(image, plain).convert("L")
    foreground = distance.point(lambda value: 255 if value > _BACKGROUND_TOLERANCE else 0)
    image.putalpha(ImageChops.multiply(image.getchannel("A"), foreground))
    return image


_OPERATIONS: dict[str, Callable[[EditInputs, tuple[int, int], Painting], Image.Image]] = {
    "edit": _edit,
    "inpaint": _edit,
    "upscale": _upscale,
    "outpaint": _outpaint,
    "reframe": _reframe,
    "mix": _mix,
    "remove_background": _remove_background,
}
