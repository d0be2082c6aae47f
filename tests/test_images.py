"""Tests for nomic_memory.ingest.images: real files written with Pillow into tmp_path."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from nomic_memory.ingest.images import (
    IMAGE_EXTENSIONS,
    MIN_SIDE,
    ImageError,
    discover_images,
    is_image_path,
    jpeg_draft_scale,
    load_image,
    pad_extreme_aspect,
    to_rgb,
)

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def close_to(actual, expected, tol=12):
    return all(abs(int(a) - int(e)) <= tol for a, e in zip(actual, expected, strict=True))


def noise(size=(256, 256), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(autouse=True)
def _pillow_globals_untouched():
    """load_image must never change Pillow's process-wide settings."""
    before = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS)
    yield
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS) == before


# --------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------


def test_image_extensions_constant():
    assert IMAGE_EXTENSIONS == (
        ".jpg",
        ".jpeg",
        ".png",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".heic",
        ".heif",
        ".avif",
    )
    assert is_image_path("x/Y.TiFf") and not is_image_path("x.jpg.bak")


def test_discover_order_case_nesting_and_filtering(tmp_path, monkeypatch):
    rel = [
        "b.JPG",
        "a.png",
        "sub/c.jpeg",
        "sub/deeper/d.WebP",
        "sub/deeper/e.TIF",
        "z.Gif",
        "m.bmp",
        "n.tiff",
    ]
    ignored = ["notes.txt", "e.jpg.bak", "sub/readme.md", "noext", "sub/deeper/x.JPG.tmp"]
    for name in rel + ignored:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    (tmp_path / "dir.jpg").mkdir()  # a directory with an image-like name is not a file

    found = discover_images(tmp_path)
    assert all(p.is_absolute() for p in found)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == sorted(rel)

    # Relative roots also give absolute paths, in the same order.
    monkeypatch.chdir(tmp_path / "sub")
    assert discover_images("..") == found
    assert discover_images(str(tmp_path)) == found


def test_discover_empty_folder(tmp_path):
    assert discover_images(tmp_path) == []


def test_discover_missing_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_images(tmp_path / "nope")
    f = tmp_path / "a.jpg"
    f.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="a.jpg"):
        discover_images(f)


# --------------------------------------------------------------------------
# ImageError
# --------------------------------------------------------------------------


def test_image_error_fields_and_pickle(tmp_path):
    p = tmp_path / "x.png"
    err = ImageError(p, "empty file")
    assert err.path == p and err.reason == "empty file"
    assert str(err) == f"{p}: empty file"
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ImageError) and str(back) == str(err) and back.reason == err.reason


# --------------------------------------------------------------------------
# decoding: modes and orientation
# --------------------------------------------------------------------------


def assert_plain_rgb(img):
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    assert type(img) is Image.Image  # detached from the file-backed plugin object


def test_plain_rgb_png_roundtrip(tmp_path):
    src = noise((64, 48))
    p = tmp_path / "n.png"
    src.save(p)
    img = load_image(p)
    assert_plain_rgb(img)
    assert img.size == (64, 48)
    assert img.tobytes() == src.tobytes()


def test_exif_orientation_6_rotates(tmp_path):
    # 80 wide x 40 high, red block in the top-left corner, blue elsewhere.
    src = Image.new("RGB", (80, 40), BLUE)
    src.paste(RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    p = tmp_path / "rot.jpg"
    src.save(p, quality=95, exif=exif)

    img = load_image(p)
    assert_plain_rgb(img)
    assert img.size == (40, 80)
    # Rotating clockwise moves the top-left corner to the top-right.
    assert close_to(img.getpixel((40 - 5, 5)), RED)
    assert close_to(img.getpixel((5, 5)), BLUE)
    assert close_to(img.getpixel((5, 80 - 5)), BLUE)


def test_rgba_composited_on_white(tmp_path):
    src = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # fully transparent black
    src.putpixel((1, 1), (255, 0, 0, 255))
    src.putpixel((2, 2), (255, 0, 0, 128))
    p = tmp_path / "a.png"
    src.save(p)
    img = load_image(p)
    assert_plain_rgb(img)
    assert img.getpixel((10, 10)) == WHITE
    assert img.getpixel((1, 1)) == RED
    assert close_to(img.getpixel((2, 2)), (255, 127, 127), tol=2)


def test_la_composited_on_white(tmp_path):
    src = Image.new("LA", (32, 32), (0, 0))
    src.putpixel((3, 3), (0, 255))
    p = tmp_path / "la.png"
    src.save(p)
    assert Image.open(p).mode == "LA"
    img = load_image(p)
    assert img.getpixel((10, 10)) == WHITE
    assert img.getpixel((3, 3)) == (0, 0, 0)


@pytest.mark.parametrize("fmt", ["png", "gif"])
def test_palette_with_transparency(tmp_path, fmt):
    src = Image.new("P", (32, 32), 0)
    src.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))  # index 0 black, 1 red
    src.paste(1, (0, 0, 8, 8))
    p = tmp_path / f"p.{fmt}"
    src.save(p, transparency=0)
    with Image.open(p) as check:
        assert check.mode == "P" and "transparency" in check.info
    img = load_image(p)
    assert_plain_rgb(img)
    assert img.getpixel((20, 20)) == WHITE  # transparent black -> white
    assert img.getpixel((2, 2)) == RED


def test_pa_mode_to_rgb():
    src = Image.new("PA", (30, 30))
    src.putpalette([0, 0, 0, 0, 255, 0] + [0] * (254 * 3))
    src.paste((1, 255), (0, 0, 5, 5))  # opaque green, rest transparent black
    img = to_rgb(src)
    assert img.getpixel((1, 1)) == GREEN
    assert img.getpixel((20, 20)) == WHITE


def test_cmyk_jpeg_colour_preserved(tmp_path):
    src = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    p = tmp_path / "cmyk.jpg"
    src.save(p, quality=95)
    with Image.open(p) as check:
        assert check.mode == "CMYK"
    img = load_image(p)
    assert_plain_rgb(img)
    assert close_to(img.getpixel((16, 16)), RED, tol=20)


def test_16bit_png_gradient_full_range(tmp_path):
    grad = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    p = tmp_path / "g16.png"
    Image.fromarray(grad).save(p)
    with Image.open(p) as check:
        assert check.mode.startswith("I")
    img = load_image(p)
    assert_plain_rgb(img)
    arr = np.asarray(img)
    assert arr.min() == 0 and arr.max() == 255
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()
    flat = arr[..., 0].ravel().astype(int)
    assert (np.diff(flat) >= 0).all()  # monotonic: not clipped to white
    assert 120 <= flat[len(flat) // 2] <= 135
    assert (flat == 255).sum() < 100


def test_16bit_big_endian_and_32bit_int():
    be = Image.frombytes("I;16B", (30, 30), np.full((30, 30), 65535, ">u2").tobytes())
    assert to_rgb(be).getpixel((0, 0)) == WHITE
    half = Image.frombytes("I;16B", (30, 30), np.full((30, 30), 32768, ">u2").tobytes())
    assert close_to(to_rgb(half).getpixel((0, 0)), (128, 128, 128), tol=1)

    ints = Image.fromarray(np.linspace(1000, 5000, 30 * 30).astype(np.int32).reshape(30, 30))
    assert ints.mode == "I"
    arr = np.asarray(to_rgb(ints))
    assert arr.min() == 0 and arr.max() == 255


def test_float_tiff_scaled(tmp_path):
    data = np.linspace(-1.5, 3.0, 40 * 40, dtype=np.float32).reshape(40, 40)
    p = tmp_path / "f.tif"
    Image.fromarray(data).save(p)
    with Image.open(p) as check:
        assert check.mode == "F"
    img = load_image(p)
    assert_plain_rgb(img)
    arr = np.asarray(img)[..., 0]
    assert arr.min() == 0 and arr.max() == 255
    assert arr[0, 0] == 0 and arr[-1, -1] == 255


def test_constant_float_image():
    img = to_rgb(Image.new("F", (30, 30), 7.0))
    assert img.getpixel((0, 0)) == (7, 7, 7)


@pytest.mark.parametrize("mode", ["1", "L", "P", "YCbCr", "HSV", "RGBX"])
def test_other_modes_become_rgb(mode):
    img = to_rgb(Image.new(mode, (30, 30)))
    assert img.mode == "RGB" and img.size == (30, 30)


def test_one_bit_and_grey_files(tmp_path):
    bw = Image.new("1", (40, 40), 1)
    bw.paste(0, (0, 0, 10, 10))
    bw.save(tmp_path / "bw.bmp")
    grey = Image.new("L", (40, 40), 200)
    grey.save(tmp_path / "g.jpg")
    a = load_image(tmp_path / "bw.bmp")
    assert a.getpixel((2, 2)) == (0, 0, 0) and a.getpixel((30, 30)) == WHITE
    b = load_image(tmp_path / "g.jpg")
    assert_plain_rgb(b)
    assert close_to(b.getpixel((20, 20)), (200, 200, 200), tol=3)


def _open_fds_to(path: Path) -> int:
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        pytest.skip("needs /proc to inspect open files")
    count = 0
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd) == str(path):
                count += 1
        except OSError:
            pass
    return count


def test_animated_gif_first_frame_and_file_closed(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in (RED, GREEN, BLUE)]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(p) as check:
        assert check.n_frames == 3
    img = load_image(p)
    assert_plain_rgb(img)
    assert img.getpixel((16, 16)) == RED
    assert _open_fds_to(p) == 0


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_animated_webp_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in (GREEN, RED)]
    p = tmp_path / "anim.webp"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, lossless=True)
    with Image.open(p) as check:
        assert check.n_frames == 2
    assert load_image(p).getpixel((16, 16)) == GREEN


def test_multipage_tiff_first_page_and_file_closed(tmp_path):
    pages = [Image.new("RGB", (40, 30), c) for c in (BLUE, RED)]
    p = tmp_path / "multi.tiff"
    pages[0].save(p, save_all=True, append_images=pages[1:])
    with Image.open(p) as check:
        assert check.n_frames == 2
    img = load_image(p)
    assert_plain_rgb(img)
    assert img.size == (40, 30)
    assert img.getpixel((5, 5)) == BLUE
    assert _open_fds_to(p) == 0


# --------------------------------------------------------------------------
# shape padding
# --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 500), (500, 1), (3, 2000), (2000, 3), (30, 10_000), (1, 1)])
def test_strips_and_tiny_images_are_padded(tmp_path, size):
    src = Image.new("RGB", size, RED)
    p = tmp_path / "strip.png"
    src.save(p)
    img = load_image(p)
    assert_plain_rgb(img)
    w, h = img.size
    assert min(w, h) >= MIN_SIDE
    assert max(w, h) / min(w, h) <= 200 * 0.9
    assert max(w, h) == max(max(size), MIN_SIDE)  # long side never changes (beyond the minimum)
    # The original pixels sit centred; the padding is white.
    x0, y0 = (w - size[0]) // 2, (h - size[1]) // 2
    assert img.getpixel((x0, y0)) == RED
    assert img.crop((x0, y0, x0 + size[0], y0 + size[1])).getcolors() == [(size[0] * size[1], RED)]
    assert img.getpixel((0, 0)) == WHITE or (x0, y0) == (0, 0)


def test_pad_extreme_aspect_noop_and_custom_ratio():
    ok = Image.new("RGB", (100, 50))
    assert pad_extreme_aspect(ok) is ok
    wide = Image.new("RGB", (1000, 50))
    out = pad_extreme_aspect(wide, max_ratio=10, margin=1.0)
    assert out.size == (1000, 100)
    grey = Image.new("L", (5, 100), 0)
    padded = pad_extreme_aspect(grey)
    assert padded.mode == "L" and padded.size == (28, 100) and padded.getpixel((0, 0)) == 255
    cmyk = pad_extreme_aspect(Image.new("CMYK", (5, 100), (0, 0, 0, 255)))
    assert cmyk.mode == "RGB" and cmyk.size == (28, 100)
    assert cmyk.getpixel((0, 0)) == WHITE and cmyk.getpixel((14, 50)) == (0, 0, 0)


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------


def test_decompression_bomb_refused_from_header(tmp_path):
    p = tmp_path / "big.png"
    noise((100, 100)).save(p)
    with pytest.raises(ImageError) as info:
        load_image(p, max_image_pixels=5_000)
    assert info.value.reason == "image too large: 100 x 100 pixels exceeds limit 5000"
    assert info.value.path == p

    # Decided from the header alone: a file whose pixel data is cut off still
    # reports "too large", not a decode error.
    data = p.read_bytes()
    cut = tmp_path / "big_cut.png"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="image too large: 100 x 100"):
        load_image(cut, max_image_pixels=5_000)
    assert load_image(p, max_image_pixels=10_000).size == (100, 100)


def test_pillow_bomb_error_and_warning_converted(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.new("RGB", (100, 100), RED).save(p)
    # Pillow itself raises above 2x its global limit, whatever our limit says.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with pytest.raises(ImageError, match="image too large"):
        load_image(p, max_image_pixels=10**9)
    # Between 1x and 2x Pillow only warns: a stricter local limit refuses ...
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6_000)
    with pytest.raises(ImageError, match="image too large"):
        load_image(p, max_image_pixels=5_000)
    # ... while a caller who allows more gets the image.
    assert load_image(p, max_image_pixels=20_000).getpixel((0, 0)) == RED


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.touch()
    with pytest.raises(ImageError) as info:
        load_image(p)
    assert info.value.reason == "empty file"
    assert str(info.value) == f"{p}: empty file"


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_truncated_file(tmp_path, fmt):
    full = tmp_path / f"full.{fmt}"
    noise((256, 256)).save(full)
    data = full.read_bytes()
    p = tmp_path / f"half.{fmt}"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as info:
        load_image(p)
    assert info.value.reason.startswith("truncated or corrupt image data: ")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_text_file_with_image_extension(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture\n" * 10)
    with pytest.raises(ImageError) as info:
        load_image(p)
    assert info.value.reason == "not an image (cannot identify format)"


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "gone.png")
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path / "d.png")


def test_permission_denied(tmp_path):
    p = tmp_path / "secret.png"
    Image.new("RGB", (30, 30)).save(p)
    p.chmod(0)
    try:
        if os.access(p, os.R_OK) or (hasattr(os, "geteuid") and os.geteuid() == 0):
            pytest.skip("running with privileges that can read mode-000 files")
        with pytest.raises(ImageError) as info:
            load_image(p)
        assert info.value.reason == "permission denied"
    finally:
        p.chmod(0o644)


def test_corrupt_exif_does_not_lose_image(tmp_path):
    p = tmp_path / "badexif.jpg"
    Image.new("RGB", (40, 30), GREEN).save(p, exif=b"Exif\x00\x00garbage-not-tiff")
    img = load_image(p)
    assert img.size == (40, 30)


# --------------------------------------------------------------------------
# JPEG draft (DCT scaling)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("w", "h", "target", "scale"),
    [
        (4000, 3000, 200_000, 4),  # 1/8 would give 500x375 = 187_500 < target
        (4000, 3000, 187_500, 8),
        (4000, 3000, 3_000_000, 2),
        (4000, 3000, 3_000_001, 1),
        (4000, 3000, None, 1),
        (640, 480, 1_000_000, 1),
        (20_000, 100, 10_000, 2),  # 1/4 would leave a 25 px short side
    ],
)
def test_jpeg_draft_scale(w, h, target, scale):
    assert jpeg_draft_scale(w, h, target) == scale
    if target and scale > 1:
        assert -(-w // scale) * -(-h // scale) >= target


@pytest.mark.parametrize("size", [(4000, 3000), (4001, 3003)])
def test_large_jpeg_decoded_at_reduced_size(tmp_path, size):
    src = Image.new("RGB", size, BLUE)
    src.paste(RED, (0, 0, size[0] // 2, size[1] // 2))
    p = tmp_path / "big.jpg"
    src.save(p, quality=85)

    img = load_image(p, target_pixels=200_000)
    assert_plain_rgb(img)
    expected = (-(-size[0] // 4), -(-size[1] // 4))
    assert img.size == expected
    assert img.width * img.height >= 200_000
    assert close_to(img.getpixel((10, 10)), RED)
    assert close_to(img.getpixel((img.width - 10, img.height - 10)), BLUE)


def test_mpo_is_drafted_like_jpeg(tmp_path):
    p = tmp_path / "camera.jpg"
    first = Image.new("RGB", (1600, 1200), RED)
    first.save(p, format="MPO", save_all=True, append_images=[Image.new("RGB", (1600, 1200), BLUE)])
    with Image.open(p) as check:
        assert check.format == "MPO"
    img = load_image(p, target_pixels=100_000)
    assert img.size == (400, 300)
    assert close_to(img.getpixel((200, 150)), RED)


def test_target_pixels_ignored_for_png(tmp_path):
    p = tmp_path / "big.png"
    Image.new("RGB", (1200, 900), GREEN).save(p)
    assert load_image(p, target_pixels=10_000).size == (1200, 900)


def test_no_target_means_full_size_jpeg(tmp_path):
    p = tmp_path / "mid.jpg"
    Image.new("RGB", (800, 600), GREEN).save(p)
    assert load_image(p).size == (800, 600)
    assert load_image(p, target_pixels=1_000_000).size == (800, 600)
