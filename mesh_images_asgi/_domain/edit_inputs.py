"""The images an edit works on, checked by their content.

An upload is an image only if Pillow recognizes its bytes as PNG, JPEG or WebP, whatever its file
name or declared type says. Dimensions come from the header, before a pixel is decoded, so a
decompression bomb (a small file that decodes to billions of pixels) is refused without being
decoded; PNG files are then walked chunk by chunk (``verify``) and JPEG files decoded at 1/8
scale, which catches truncated and corrupt files at little cost in memory (Pillow decodes a WebP
file when it opens it). A mask must have an alpha channel (alpha 0 marks where to
edit) and the size of the first image.

    EditInputs
      images     1..16 InputImage (the first is the one edited; the others are references)
      mask       InputImage | None
      operation  edit | inpaint | outpaint | mix | reframe | upscale | remove_background
      input_fidelity, upscale_factor, expand_factor   the knobs some operations take
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

from mesh_images_asgi._core.errors import InvalidRequest

__all__ = [
    "FORMATS",
    "MAX_IMAGES",
    "OPERATIONS",
    "EditInputs",
    "InputImage",
    "check_image",
    "decode_image_field",
]

MAX_IMAGES = 16
"""Input images one request may carry (OpenAI's limit)."""
OPERATIONS = ("edit", "inpaint", "outpaint", "mix", "reframe", "upscale", "remove_background")
FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
MAX_INPUT_PIXELS = 64 * 1024 * 1024
"""Above this, an input is refused from its header alone, whatever the model: the bomb guard."""
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_DATA_URL = re.compile(r"^data:(image/[a-z0-9.+-]+)?(;[a-z0-9=.+-]+)*;base64,", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class InputImage:
    """One checked upload: its bytes, the format its content has, and its dimensions."""

    data: bytes = field(repr=False)
    format: str
    width: int
    height: int
    has_alpha: bool

    @property
    def mime_type(self) -> str:
        return f"image/{self.format}"

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True, slots=True)
class EditInputs:
    """What an edit works on, beside the request's prompt and output fields."""

    images: tuple[InputImage, ...]
    mask: InputImage | None = None
    operation: str = "edit"
    input_fidelity: str | None = None
    upscale_factor: float | None = None
    expand_factor: float | None = None

    def __post_init__(self) -> None:
        if not self.images:
            raise InvalidRequest("An edit needs at least one image.", param="image")
        if len(self.images) > MAX_IMAGES:
            raise InvalidRequest(
                f"{len(self.images)} images were sent; an edit takes at most {MAX_IMAGES}.",
                param="image",
            )
        if self.operation not in OPERATIONS:
            raise InvalidRequest(
                f"operation {self.operation!r} is not known; it is one of: "
                f"{', '.join(OPERATIONS)}.",
                param="operation",
            )
        mask, first = self.mask, self.images[0]
        if mask is not None:
            if not mask.has_alpha:
                raise InvalidRequest(
                    "mask has no alpha channel; send a PNG (or WebP) whose transparent pixels "
                    "(alpha 0) mark where to edit.",
                    param="mask",
                )
            if (mask.width, mask.height) != (first.width, first.height):
                raise InvalidRequest(
                    f"mask is {mask.size} but the image is {first.size}; they must be the same "
                    "size.",
                    param="mask",
                )

    @property
    def first(self) -> InputImage:
        return self.images[0]


def check_image(data: bytes, param: str) -> InputImage:
    """``data`` as an ``InputImage``, or 400 ``invalid_request`` naming ``param``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=tuple(FORMATS)) as image:
                width, height = image.size
                if width * height > MAX_INPUT_PIXELS:
                    raise InvalidRequest(
                        f"{param} is {width}x{height}, more than the {MAX_INPUT_PIXELS} pixels "
                        "an input may have.",
                        param=param,
                    )
                fmt = FORMATS[str(image.format)]
                has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
                if fmt == "png":
                    image.verify()  # every chunk's CRC: truncated or corrupt files fail here
                elif fmt == "jpeg":
                    # The whole stream decoded at 1/8 scale (JPEG's DCT scaling): a truncated or
                    # corrupt file fails here, for 1/64 of the pixels' memory.
                    image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                    image.load()
    except InvalidRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidRequest(
            f"{param} has more than the {MAX_INPUT_PIXELS} pixels an input may have.", param=param
        ) from None
    except UnidentifiedImageError:
        raise InvalidRequest(
            f"{param} is not a PNG, JPEG or WebP image (checked by its content, not its name).",
            param=param,
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise InvalidRequest(f"{param} is a damaged or truncated image.", param=param) from None
    return InputImage(data, fmt, width, height, has_alpha)


def decode_image_field(value: str, param: str) -> bytes:
    """A JSON image field (a ``data:`` URL or bare base64) as bytes; remote URLs are refused."""
    text = value.strip()
    if text[:8].lower().startswith(("http://", "https://")):
        raise InvalidRequest(
            f"{param} is a remote URL; send the image itself, as a data URL or base64 (this "
            "gateway does not fetch URLs).",
            param=param,
        )
    match = _DATA_URL.match(text)
    if match is not None:
        text = text[match.end() :]
    elif text[:5].lower() == "data:":
        raise InvalidRequest(f"{param} is a data URL without ';base64,'.", param=param)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            f"{param} is neither a data URL nor base64 image data.", param=param
        ) from None
