"""Tests for mantra_jax.eval.datasets: pairing rules, presets and mask decoding."""
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from mantra_jax.eval import datasets


def _write(path: Path, array: np.ndarray) -> Path:
    """Writes an image with OpenCV (arrays given in OpenCV's channel order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), path
    return path


def _grey(value=0, shape=(12, 16)):
    return np.full(shape, value, np.uint8)


def _touch_images(folder: Path, names, shape=(12, 16)):
    for name in names:
        _write(folder / name, np.zeros((*shape, 3), np.uint8))


def _names(items):
    return sorted(Path(s.path).name for s in items)


# --------------------------------------------------------------------------------------------
# Pairing
# --------------------------------------------------------------------------------------------
def test_pairs_by_stem_with_the_usual_suffixes(tmp_path):
    _touch_images(tmp_path / "img", ["a.png", "b.jpg", "c.png", "d.png"])
    for name in ["a_gt.png", "b_mask.png", "c.png", "e_gt.png"]:
        _write(tmp_path / "gt" / name, _grey())
    pairs, skipped = datasets.pair_images_and_masks(tmp_path / "img", tmp_path / "gt")
    assert [(p.name, p.mask.name) for p in pairs] == [("a", "a_gt.png"), ("b", "b_mask.png"), ("c", "c.png")]
    by_kind = {k: _names(s for s in skipped if s.kind == k) for k in ("image", "mask")}
    assert by_kind == {"image": ["d.png"], "mask": ["e_gt.png"]}
    assert next(s for s in skipped if s.kind == "image").reason == "no mask"


def test_a_suffixed_mask_beats_a_same_stem_one_and_ties_are_ambiguous(tmp_path):
    _touch_images(tmp_path / "img", ["x.png", "y.png"])
    for name in ["x.png", "x_gt.png", "y_gt.png", "y_gt.tif"]:
        _write(tmp_path / "gt" / name, _grey())
    pairs, skipped = datasets.pair_images_and_masks(tmp_path / "img", tmp_path / "gt")
    assert [(p.name, p.mask.name) for p in pairs] == [("x", "x_gt.png")]
    ambiguous = [s for s in skipped if s.reason == "ambiguous mask"]
    assert _names(ambiguous) == ["y.png"] and "y_gt.tif" in ambiguous[0].detail
    # The unused candidates are reported, not lost.
    assert _names(s for s in skipped if s.kind == "mask") == ["x.png", "y_gt.png", "y_gt.tif"]


def test_images_and_masks_in_one_folder(tmp_path):
    _touch_images(tmp_path, ["Tp_1.tif", "Tp_2.jpg"])
    _write(tmp_path / "Tp_1_gt.png", _grey())
    pairs, skipped = datasets.pair_images_and_masks(tmp_path, tmp_path, preset="casia_v2")
    assert [(p.image.name, p.mask.name) for p in pairs] == [("Tp_1.tif", "Tp_1_gt.png")]
    assert _names(skipped) == ["Tp_2.jpg"]


def test_empty_and_missing_folders_are_named(tmp_path):
    (tmp_path / "img").mkdir()
    _write(tmp_path / "gt" / "a.png", _grey())
    with pytest.raises(ValueError, match=r"images folder .*img holds no files"):
        datasets.pair_images_and_masks(tmp_path / "img", tmp_path / "gt")
    with pytest.raises(FileNotFoundError, match=r"masks folder .*nowhere does not exist"):
        datasets.pair_images_and_masks(tmp_path / "gt", tmp_path / "nowhere")
    _touch_images(tmp_path / "img", ["q.png"])
    with pytest.raises(ValueError, match="no image of .* pairs with a mask"):
        datasets.pair_images_and_masks(tmp_path / "img", tmp_path / "gt")


def test_unknown_preset_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="coverage"):
        datasets.pair_images_and_masks(tmp_path, tmp_path, preset="casia3")


def test_casia_v1_searches_subfolders(tmp_path):
    _touch_images(tmp_path / "Tp" / "Sp", ["Sp_D_1.jpg"])
    _touch_images(tmp_path / "Tp" / "CM", ["Sp_S_2.jpg"])
    _write(tmp_path / "gt" / "Sp" / "Sp_D_1_gt.png", _grey())
    _write(tmp_path / "gt" / "CM" / "Sp_S_2_gt.png", _grey())
    pairs, skipped = datasets.pair_images_and_masks(tmp_path / "Tp", tmp_path / "gt", preset="casia_v1")
    assert [p.name for p in pairs] == ["Sp_D_1", "Sp_S_2"] and skipped == []


def test_coverage_layout(tmp_path):
    _touch_images(tmp_path / "image", ["1.tif", "1t.tif", "2.tif", "2t.tif"])
    for name in ["1forged.tif", "1copy.tif", "1paste.tif", "2forged.tif"]:
        _write(tmp_path / "mask" / name, _grey())
    pairs, skipped = datasets.pair_images_and_masks(tmp_path / "image", tmp_path / "mask", preset="coverage")
    assert [(p.image.name, p.mask.name) for p in pairs] == [("1t.tif", "1forged.tif"), ("2t.tif", "2forged.tif")]
    # Originals are reported as such; the copy/paste masks are alternatives, not unpaired files.
    assert [(Path(s.path).name, s.kind) for s in skipped] == [("1.tif", "not_forged"), ("2.tif", "not_forged")]
    authentic = datasets.list_authentic_images(tmp_path / "image", preset="coverage")
    assert [p.name for p in authentic] == ["1.tif", "2.tif"]


def test_nist16_pairs_through_the_reference_index_and_inverts(tmp_path):
    root = tmp_path / "NC2016_Test0613"
    _touch_images(root / "probe", ["NC2016_0001.jpg", "NC2016_0002.jpg", "NC2016_0003.jpg"])
    black_region = _grey(255)
    black_region[2:6, 3:9] = 0  # NIST marks the manipulated region in black
    _write(root / "reference" / "manipulation" / "mask" / "NC2016_9001.png", black_region)
    (root / "reference" / "manipulation" / "NC2016-manipulation-ref.csv").write_text(
        "TaskID|ProbeFileID|ProbeFileName|ProbeMaskFileName|IsTarget\n"
        "manipulation|NC2016_0001|probe/NC2016_0001.jpg|reference/manipulation/mask/NC2016_9001.png|Y\n"
        "manipulation|NC2016_0002|probe/NC2016_0002.jpg||N\n")
    pairs, skipped = datasets.pair_images_and_masks(root / "probe", root / "reference/manipulation/mask",
                                                     preset="nist16")
    assert [(p.image.name, p.mask.name) for p in pairs] == [("NC2016_0001.jpg", "NC2016_9001.png")]
    assert sorted((Path(s.path).name, s.kind, s.reason) for s in skipped) == [
        ("NC2016_0002.jpg", "not_forged", "authentic by index"),
        ("NC2016_0003.jpg", "image", "not in index"),
    ]
    mask = datasets.read_mask(pairs[0].mask, preset="nist16")
    expected = np.zeros_like(mask)
    expected[2:6, 3:9] = 1
    np.testing.assert_array_equal(mask, expected)
    # An explicit flag overrides the preset.
    np.testing.assert_array_equal(datasets.read_mask(pairs[0].mask, preset="nist16", invert=False), 1 - expected)


# --------------------------------------------------------------------------------------------
# Mask reading
# --------------------------------------------------------------------------------------------
def _expected_region(shape=(12, 16)):
    region = np.zeros(shape, np.uint8)
    region[3:9, 4:12] = 1
    return region


@pytest.mark.parametrize("layout", ["L", "RGB", "RGBA_alpha", "RGBA_opaque", "L16", "zero_one", "antialiased"])
def test_read_mask_layouts(tmp_path, layout):
    region = _expected_region()
    if layout == "L":
        stored = region * 255
    elif layout == "RGB":
        stored = np.repeat((region * 255)[:, :, None], 3, axis=2)
    elif layout == "RGBA_alpha":  # white everywhere, the region opaque and the rest transparent
        stored = np.dstack([np.full(region.shape + (3,), 255, np.uint8), region * 255])
    elif layout == "RGBA_opaque":
        stored = np.dstack([np.repeat((region * 255)[:, :, None], 3, axis=2), np.full(region.shape, 255, np.uint8)])
    elif layout == "L16":
        stored = region.astype(np.uint16) * 65535
    elif layout == "zero_one":
        stored = region.copy()
    else:  # anti-aliased edge values on either side of the threshold
        stored = region * 255
        stored[3, 4:12] = 128
        stored[2, 4:12] = 127
    path = _write(tmp_path / f"mask_{layout}.png", stored.astype(stored.dtype))
    mask = datasets.read_mask(path)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, region)
    np.testing.assert_array_equal(datasets.read_mask(path, invert=True), 1 - region)


def test_unreadable_mask_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(datasets.UnusableSample, match="broken.png") as error:
        datasets.read_mask(bad)
    assert error.value.reason == "unreadable"


def test_oversized_image_and_mask_are_unusable_before_decoding(tmp_path):
    # A PNG header announcing 100000 x 100000 pixels: refused by images' limit, never decoded.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00" * 4
    for name, read in (("huge.png", datasets.read_rgb), ("huge_gt.png", datasets.read_mask)):
        (tmp_path / name).write_bytes(bomb)
        with pytest.raises(datasets.UnusableSample, match=f"{name}.*exceeds the limit") as error:
            read(tmp_path / name)
        assert error.value.reason == "unreadable"


def _columbia_mask(shape=(96, 128)):
    """A synthetic Columbia-style mask: an ellipse spliced into a host, colour-coded."""
    truth = np.zeros(shape, np.uint8)
    cv2.ellipse(truth, (70, 45), (32, 22), 15, 0, 360, 1, -1)
    inside = cv2.distanceTransform(truth, cv2.DIST_L2, 5)
    outside = cv2.distanceTransform(1 - truth, cv2.DIST_L2, 5)
    rgb = np.zeros(shape + (3,), np.uint8)
    rgb[truth == 0] = (150, 0, 0)  # host: dark red
    rgb[(truth == 0) & (outside <= 5)] = (255, 110, 110)  # host near the boundary: light red
    rgb[truth == 1] = (0, 150, 0)  # spliced: dark green
    rgb[(truth == 1) & (inside <= 5)] = (110, 255, 110)  # spliced near the boundary: light green
    rgb[(inside <= 1.5) & (truth == 1) | (outside <= 1.5) & (truth == 0)] = (255, 255, 0)  # unlabelled band
    return rgb, truth


def test_columbia_edge_mask_decodes_to_the_spliced_region(tmp_path):
    rgb, truth = _columbia_mask()
    decoded = datasets.decode_columbia_edgemask(rgb)
    boundary = cv2.morphologyEx(truth, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).astype(bool)
    assert np.array_equal(decoded[~boundary], truth[~boundary])  # exact away from the boundary
    assert np.mean(decoded != truth) < 0.01
    # Stored as JPEG and read through the preset, as the public masks are.
    _write(tmp_path / "4cam_splc" / "canong3_nikond70_sub_01.tif", np.zeros((96, 128, 3), np.uint8))
    _write(tmp_path / "4cam_splc" / "edgemask" / "canong3_nikond70_sub_01_edgemask.jpg",
           cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    pairs, skipped = datasets.pair_images_and_masks(tmp_path / "4cam_splc", tmp_path / "4cam_splc" / "edgemask",
                                                     preset="columbia")
    assert len(pairs) == 1 and skipped == []
    from_jpeg = datasets.read_mask(pairs[0].mask, preset="columbia")
    assert np.mean(from_jpeg != truth) < 0.02


def test_columbia_decoding_rejects_uncoded_masks():
    with pytest.raises(ValueError, match="Columbia"):
        datasets.decode_columbia_edgemask(np.full((8, 8, 3), 200, np.uint8))


# --------------------------------------------------------------------------------------------
# Images and sizes
# --------------------------------------------------------------------------------------------
def test_read_rgb_returns_rgb_order(tmp_path):
    bgr = np.zeros((6, 7, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's order
    path = _write(tmp_path / "red.png", bgr)
    rgb = datasets.read_rgb(path)
    assert rgb.shape == (6, 7, 3) and rgb.dtype == np.uint8
    assert rgb[..., 0].min() == 200 and rgb[..., 2].max() == 0


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an APP1 EXIF segment holding only the orientation tag (0x0112)."""
    tiff = (b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1)
            + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0))
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\x00\x00" + tiff
    return jpeg[:2] + app1 + jpeg[2:]


def test_images_keep_stored_pixel_order_despite_exif_orientation(tmp_path):
    bgr = np.zeros((12, 16, 3), np.uint8)
    bgr[:, :4] = 255  # a white band on the left of the stored raster
    ok, jpeg = cv2.imencode(".jpg", bgr)
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_with_exif_orientation(jpeg.tobytes(), 6))  # "rotate 90 degrees to display"
    assert cv2.imread(str(path)).shape == (16, 12, 3)  # OpenCV's default honours the tag
    rgb = datasets.read_rgb(path)
    assert rgb.shape == (12, 16, 3)
    assert rgb[:, :4].min() > 200 and rgb[:, 6:].max() < 50


def test_size_mismatch_is_unusable_unless_resized(tmp_path):
    _touch_images(tmp_path / "img", ["a.png"], shape=(12, 16))
    _write(tmp_path / "gt" / "a_gt.png", cv2.resize(_expected_region() * 255, (32, 24),
                                                     interpolation=cv2.INTER_NEAREST))
    (pair,), _ = datasets.pair_images_and_masks(tmp_path / "img", tmp_path / "gt")
    with pytest.raises(datasets.UnusableSample, match="size mismatch, image 12x16, mask 24x32") as error:
        datasets.load_pair(pair)
    assert error.value.reason == "size mismatch"
    rgb, mask = datasets.load_pair(pair, resize_masks=True)
    assert rgb.shape == (12, 16, 3)
    np.testing.assert_array_equal(mask, _expected_region())


def test_gif_and_webp_images_pair_and_unreadable_entries_are_listed(tmp_path):
    grey = np.full((8, 8), 255, np.uint8)
    ok, webp = cv2.imencode(".webp", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "w.webp").write_bytes(webp.tobytes())
    (tmp_path / "images" / "g.gif").write_bytes(bytes.fromhex(
        "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"))
    (tmp_path / "images" / "loop.png").symlink_to("loop.png")
    _write(tmp_path / "masks" / "w.png", grey)
    _write(tmp_path / "masks" / "g.png", grey)
    _write(tmp_path / "masks" / "loop.png", grey)
    pairs, skipped = datasets.pair_images_and_masks(tmp_path / "images", tmp_path / "masks")
    assert sorted(p.image.name for p in pairs) == ["g.gif", "w.webp"]
    listed = {(Path(s.path).name, s.kind): s for s in skipped}
    assert "link loop" in listed[("loop.png", "image")].detail  # the loop itself, not only its mask
    assert ("loop.png", "mask") in listed
