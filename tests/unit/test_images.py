"""Decoding: every mode a camera or file can produce becomes 8-bit RGB; bad input is refused by name."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from indexing.errors import BadImage
from indexing.images import ImageInput, check_header, content_id, decode, image_size


def encoded(img: Image.Image, fmt: str = "PNG", **save) -> ImageInput:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **save)
    return ImageInput(data=buffer.getvalue(), source=f"test.{fmt.lower()}")


@pytest.mark.parametrize(
    "img",
    [
        Image.new("L", (40, 30), 128),
        Image.new("P", (40, 30), 3),
        Image.new("RGBA", (40, 30), (255, 0, 0, 128)),
        Image.new("LA", (40, 30), (200, 255)),
        Image.new("1", (40, 30), 1),
    ],
    ids=["grey", "palette", "rgba", "grey-alpha", "bilevel"],
)
def test_every_mode_becomes_rgb(img: Image.Image) -> None:
    out = decode(encoded(img))
    assert out.mode == "RGB" and out.size == (40, 30)


def test_cmyk_jpeg_becomes_rgb() -> None:
    out = decode(encoded(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"))
    assert out.mode == "RGB"
    r, g, b = out.getpixel((20, 15))
    assert r > 200 and g < 60 and b < 60  # cyan-free, magenta+yellow = red


def test_16_bit_grey_keeps_its_contrast() -> None:
    ramp = np.tile(np.linspace(1000, 4000, 64, dtype=np.uint16), (20, 1))  # a 12-bit sensor's range
    out = np.asarray(decode(encoded(Image.fromarray(ramp))))
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (60, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    image = encoded(img, "JPEG", exif=exif.tobytes())
    assert decode(image).size == (20, 60)
    assert image_size(image) == (20, 60)


def test_identity_is_the_content() -> None:
    a = ImageInput(data=b"same bytes", source="a.png")
    b = ImageInput(data=b"same bytes", source="elsewhere/b.png")
    assert a.id == b.id == content_id(a.sha256)
    assert ImageInput(data=b"other", source="a.png").id != a.id


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"this is a text file, not a picture", "not an image"),
    ],
)
def test_non_images_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(BadImage, match=reason) as caught:
        decode(ImageInput(data=data, source="upload.png"))
    assert caught.value.source == "upload.png"


def test_truncated_file_is_refused() -> None:
    full = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(BadImage, match="truncated|corrupt"):
        decode(ImageInput(data=full.data[: len(full.data) // 2], source="cut.jpg"))


def test_tiny_image_is_refused() -> None:
    with pytest.raises(BadImage, match="too small"):
        decode(encoded(Image.new("RGB", (1, 1))))


def test_decompression_bomb_is_refused_from_the_header(bomb_png: bytes) -> None:
    with pytest.raises(BadImage, match="pixels") as caught:
        decode(ImageInput(data=bomb_png, source="bomb.png"))
    assert caught.value.too_large


def test_pixel_limit_is_configurable() -> None:
    with pytest.raises(BadImage, match="above the limit"):
        decode(encoded(Image.new("RGB", (100, 100))), max_pixels=5_000)


def test_unaccepted_format_is_refused() -> None:
    with pytest.raises(BadImage, match="GIF"):
        decode(encoded(Image.new("RGB", (40, 40)), "GIF"))


def test_the_configured_pixel_limit_decides_not_pils_own() -> None:
    # 100 MP: above PIL's warning limit (89 MP). Nominal's limit, not PIL's, says yes or no, and is quoted.
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG")
    big = ImageInput(data=buffer.getvalue(), source="big.png")
    check_header(big, max_pixels=200_000_000)
    with pytest.raises(BadImage, match=r"100,000,000 pixels, above the limit of 50,000,000") as caught:
        check_header(big, max_pixels=50_000_000)
    assert caught.value.too_large and not caught.value.unsupported


def test_the_header_check_refuses_what_decode_refuses_without_decoding() -> None:
    with pytest.raises(BadImage) as not_image:
        check_header(ImageInput(data=b"PASS\n", source="notes.png"))
    assert not_image.value.unsupported
    with pytest.raises(BadImage, match="too small"):
        buffer = io.BytesIO()
        Image.new("RGB", (1, 1)).save(buffer, format="PNG")
        check_header(ImageInput(data=buffer.getvalue(), source="dot.png"))
