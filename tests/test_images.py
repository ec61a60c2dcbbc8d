import io

import numpy as np
import pytest
from PIL import Image

from bionas.ingest.images import ImageReject, ImageSpec, crop_box, process_image


def _photo(size=(1024, 768), mode="RGB", fmt="JPEG", **save) -> bytes:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    array[: size[1] // 2] = (250, 10, 10)  # top half red, to check orientation and crop
    image = Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_whole_image_is_resized_to_the_shorter_side():
    out = _decode(process_image(_photo(), None, ImageSpec(size=256)))
    assert out.size == (341, 256)
    assert out.format == "JPEG" and out.mode == "RGB"


def test_bbox_crop_with_margin_is_clipped_to_the_image():
    assert crop_box((10, 10, 110, 60), 1024, 768, 0.5) == (0.0, 0.0, 160.0, 85.0)
    out = _decode(process_image(_photo(), (100, 500, 300, 700), ImageSpec(size=64, crop_margin=0)))
    assert out.size == (64, 64)


def test_crop_lands_on_the_right_region():
    # bottom half is noise, top half red: a crop in the top half must come out red
    out = _decode(process_image(_photo(), (100, 50, 400, 300), ImageSpec(size=64, crop_margin=0)))
    r, g, b = np.asarray(out).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


def test_bbox_is_scaled_when_the_image_is_smaller_than_the_bbox_frame():
    small = _photo(size=(512, 384))
    out = _decode(
        process_image(small, (100, 50, 400, 300), ImageSpec(size=32, crop_margin=0), (1024, 768))
    )
    assert np.asarray(out).reshape(-1, 3).mean(0)[0] > 200


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs_become_rgb(mode):
    out = _decode(process_image(_photo(mode=mode), None, ImageSpec(size=64)))
    assert out.mode == "RGB"


def test_png_bytes_behind_a_jpg_name_are_accepted():
    out = _decode(process_image(_photo(fmt="PNG"), None, ImageSpec(size=64)))
    assert out.format == "JPEG" and out.size == (85, 64)


def test_exif_orientation_is_applied():
    upright = Image.open(io.BytesIO(_photo(size=(400, 300))))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera with tag 6 stores
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif)
    out = _decode(process_image(buffer.getvalue(), None, ImageSpec(size=64)))
    assert out.size == (85, 64)
    top = np.asarray(out)[:16].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[1] < 80


def test_truncated_jpeg_is_rejected_as_corrupt():
    data = _photo()
    with pytest.raises(ImageReject) as info:
        process_image(data[: len(data) // 2], None, ImageSpec())
    assert info.value.reason == "corrupt_image"


def test_non_image_bytes_are_rejected():
    with pytest.raises(ImageReject) as info:
        process_image(b"this is not a picture", None, ImageSpec())
    assert info.value.reason == "not_an_image"


def test_output_is_deterministic():
    data = _photo()
    assert process_image(data, (10, 10, 900, 700), ImageSpec()) == process_image(
        data, (10, 10, 900, 700), ImageSpec()
    )
