from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from stablemotion.core import flow as fl


# --------------------------------------------------------------------------- warp
def test_zero_flow_is_identity_float64_and_uint8():
    # grid_sample's normalise/unnormalise round trip costs at most an ulp or two.
    img = torch.rand(2, 3, 17, 23, dtype=torch.float64)
    assert (fl.warp(img, torch.zeros(2, 2, 17, 23, dtype=torch.float64)) - img).abs().max() < 1e-14
    img8 = torch.randint(0, 256, (3, 17, 23), dtype=torch.uint8)
    out8 = fl.warp(img8, torch.zeros(2, 17, 23))
    assert out8.dtype == torch.uint8 and torch.equal(out8, img8)


def test_zero_flow_float32_within_rounding():
    img = torch.rand(1, 3, 40, 50)
    out = fl.warp(img, torch.zeros(1, 2, 40, 50))
    assert out.dtype == torch.float32
    assert (out - img).abs().max() < 1e-5


@pytest.mark.parametrize("dx,dy", [(3, -2), (-5, 4), (0, 7)])
def test_integer_translation_matches_roll_in_valid_region(dx, dy):
    h, w = 24, 31
    img = torch.rand(2, 3, h, w, dtype=torch.float64)
    flow = torch.zeros(2, 2, h, w, dtype=torch.float64)
    flow[:, 0], flow[:, 1] = dx, dy
    out, mask = fl.warp(img, flow, padding="zeros", return_mask=True)
    rolled = torch.roll(img, shifts=(-dy, -dx), dims=(2, 3))  # out(p) = img(p + d)
    ys = slice(max(0, -dy), h - max(0, dy))
    xs = slice(max(0, -dx), w - max(0, dx))
    assert torch.allclose(out[..., ys, xs], rolled[..., ys, xs], atol=1e-12)
    assert mask.shape == (2, 1, h, w) and mask.dtype == torch.bool
    expected = torch.zeros(h, w, dtype=torch.bool)
    expected[ys, xs] = True
    assert torch.equal(mask[0, 0], expected)
    # Outside the valid region zeros padding gives 0.
    assert out[0][:, ~expected].abs().max() < 1e-12


def test_border_padding_repeats_edge():
    img = torch.arange(12, dtype=torch.float64).view(1, 1, 3, 4)
    flow = torch.zeros(1, 2, 3, 4, dtype=torch.float64)
    flow[:, 0] = 10.0  # sample far to the right
    out = fl.warp(img, flow, padding="border")
    assert torch.equal(out[0, 0], img[0, 0, :, -1:].expand(3, 4))


def test_subpixel_bilinear_and_gradients():
    img = torch.tensor([[[[0.0, 10.0, 20.0]]]], dtype=torch.float64).expand(1, 1, 2, 3).contiguous()
    flow = torch.zeros(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    shift = torch.zeros_like(flow)
    shift[:, 0] = 0.25
    out = fl.warp(img, flow + shift)
    assert torch.allclose(out[0, 0, 0, :2], torch.tensor([2.5, 12.5], dtype=torch.float64))
    out.sum().backward()
    assert flow.grad is not None and flow.grad[:, 0, :, :2].abs().min() > 0  # d out / d u = slope 10


def test_broadcast_flow_over_batch_and_half_dtypes():
    img = torch.rand(3, 3, 8, 9)
    flow = torch.randn(1, 2, 8, 9)
    out = fl.warp(img, flow)
    assert out.shape == (3, 3, 8, 9)
    assert torch.allclose(out[2], fl.warp(img[2:3], flow)[0])
    for dt in (torch.float16, torch.bfloat16):
        o = fl.warp(img.to(dt), flow)
        assert o.dtype == dt and torch.allclose(o.float(), out, atol=2e-2)


def test_warp_rejects_bad_input():
    img = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="NaN"):
        fl.warp(img, torch.full((1, 2, 8, 8), float("nan")))
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        fl.warp(img, torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="differ"):
        fl.warp(img, torch.zeros(1, 2, 8, 9))
    with pytest.raises(ValueError, match="padding"):
        fl.warp(img, torch.zeros(1, 2, 8, 8), padding="wrap")
    with pytest.raises(ValueError, match="batch sizes"):
        fl.warp(torch.rand(2, 3, 8, 8), torch.zeros(3, 2, 8, 8))
    with pytest.raises(TypeError):
        fl.warp(img.numpy(), torch.zeros(1, 2, 8, 8))


# --------------------------------------------------------------------------- VAE encoding
def test_encode_decode_is_lossless():
    flow = torch.randn(2, 2, 16, 16, dtype=torch.float64) * 40
    enc = fl.encode_flow(flow)
    assert enc.shape == (2, 3, 16, 16)
    assert torch.allclose(enc[:, 2], torch.full((2, 16, 16), 1 / 50, dtype=torch.float64))
    assert torch.allclose(enc[:, :2], flow / 50)
    assert torch.allclose(fl.decode_flow(enc), flow, atol=1e-12)
    assert torch.allclose(fl.decode_flow(fl.encode_flow(flow, gamma=10.0), gamma=10.0), flow, atol=1e-12)
    with pytest.raises(ValueError):
        fl.encode_flow(flow, gamma=0)
    with pytest.raises(ValueError, match="decoder output"):
        fl.decode_flow(torch.zeros(1, 1, 4, 4))


# --------------------------------------------------------------------------- resize
def test_resize_flow_scales_magnitudes():
    flow = torch.zeros(1, 2, 32, 48)
    flow[:, 0], flow[:, 1] = 3.0, -2.0
    out = fl.resize_flow(flow, (64, 24))
    assert out.shape == (1, 2, 64, 24)
    assert torch.allclose(out[:, 0], torch.full((1, 64, 24), 3.0 * 24 / 48))
    assert torch.allclose(out[:, 1], torch.full((1, 64, 24), -2.0 * 64 / 32))
    out_ac = fl.resize_flow(flow, (63, 95), align_corners=True)
    assert torch.allclose(out_ac[:, 0], torch.full((1, 63, 95), 3.0 * 94 / 47))
    assert torch.allclose(out_ac[:, 1], torch.full((1, 63, 95), -2.0 * 62 / 31))


def test_resized_flow_warps_consistently():
    # A smooth flow at low resolution, upsampled with align_corners=True, must warp the
    # high-resolution image like the low-resolution flow warps the low-resolution image.
    h, w = 33, 41
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    flow = torch.stack((2 * xs + 1, -1.5 * ys), 0)[None].double()
    up = fl.resize_flow(flow, (2 * h - 1, 2 * w - 1), align_corners=True)
    yy, xx = torch.meshgrid(torch.arange(2 * h - 1.0), torch.arange(2 * w - 1.0), indexing="ij")
    ramp_hi = (xx + 2 * yy)[None, None].double()
    ramp_lo = ramp_hi[..., ::2, ::2] / 2
    lo = fl.warp(ramp_lo, flow, padding="zeros")
    hi = fl.warp(ramp_hi, up, padding="zeros")
    inside = fl.valid_mask(flow)[0, 0]
    assert torch.allclose(hi[0, 0, ::2, ::2][inside] / 2, lo[0, 0][inside], atol=1e-9)


# --------------------------------------------------------------------------- meshes
def test_identity_mesh_gives_zero_flow():
    mesh = fl.rigid_mesh(6, 8, 48, 64)
    assert mesh.shape == (7, 9, 2)
    flow = fl.mesh_to_flow(mesh, 48, 64)
    assert flow.shape == (2, 48, 64) and flow.dtype == torch.float32
    assert flow.abs().max() < 1e-4


def test_mesh_translation_and_batch():
    mesh = fl.rigid_mesh(3, 4, 30, 40)
    shifted = mesh + np.array([5.0, -3.0])
    flow = fl.mesh_to_flow(np.stack([mesh, shifted]), 30, 40)
    assert flow.shape == (2, 2, 30, 40)
    assert flow[0].abs().max() < 1e-4
    assert torch.allclose(flow[1, 0], torch.full((30, 40), 5.0), atol=1e-4)
    assert torch.allclose(flow[1, 1], torch.full((30, 40), -3.0), atol=1e-4)


def test_mesh_flow_hits_control_points_and_is_continuous(rng):
    h, w = 40, 56
    mesh = fl.rigid_mesh(4, 5, h, w)
    mesh[1:-1, 1:-1] += rng.normal(0, 2.0, size=mesh[1:-1, 1:-1].shape)
    flow = fl.mesh_to_flow(mesh, h, w).double()
    rigid = fl.rigid_mesh(4, 5, h, w)
    for i in range(5):
        for j in range(6):
            x, y = rigid[i, j]
            if float(x).is_integer() and float(y).is_integer():
                mapped = np.array([x, y]) + flow[:, int(y), int(x)].numpy()
                assert np.allclose(mapped, mesh[i, j], atol=1e-4)
    # Inside a cell the flow is that cell's homography (OpenCV as the reference).
    import cv2

    src = np.float32([rigid[1, 2], rigid[1, 3], rigid[2, 3], rigid[2, 2]])
    dst = np.float32([mesh[1, 2], mesh[1, 3], mesh[2, 3], mesh[2, 2]])
    hom = cv2.getPerspectiveTransform(src, dst)
    x, y = int(np.ceil(src[0, 0])) + 1, int(np.ceil(src[0, 1])) + 1
    p = hom @ np.array([x, y, 1.0])
    assert np.allclose(p[:2] / p[2] - (x, y), flow[:, y, x].numpy(), atol=1e-3)


def test_mesh_rejects_bad_input():
    with pytest.raises(ValueError, match="rows"):
        fl.mesh_to_flow(np.zeros((7, 9)), 10, 10)
    bad = fl.rigid_mesh(2, 2, 10, 10)
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fl.mesh_to_flow(bad, 10, 10)
    degenerate = np.zeros((3, 3, 2))
    with pytest.raises(ValueError, match="degenerate"):
        fl.mesh_to_flow(degenerate, 10, 10)


# --------------------------------------------------------------------------- I/O
@pytest.mark.parametrize("ext", [".flo", ".npy", ".png"])
def test_flow_file_round_trip(tmp_path, rng, ext):
    flow = rng.normal(0, 20, size=(13, 17, 2)).astype(np.float32)
    path = fl.write_flow(tmp_path / f"f{ext}", flow)
    back = fl.read_flow(path)
    assert back.shape == (13, 17, 2) and back.dtype == np.float32
    tol = 1 / 128 + 1e-5 if ext == ".png" else 0.0  # 16-bit PNG quantises to 1/64 px
    assert np.abs(back - flow).max() <= tol
    # Tensors (2, H, W) are accepted too.
    fl.write_flow(tmp_path / f"t{ext}", torch.from_numpy(flow).permute(2, 0, 1))
    assert np.abs(fl.read_flow(tmp_path / f"t{ext}") - flow).max() <= tol
    assert not list(tmp_path.glob(".*tmp*")), "temporary files must not be left behind"


def test_flo_header_layout(tmp_path):
    flow = np.zeros((2, 3, 2), np.float32)
    flow[1, 2] = (7.5, -1.0)
    fl.write_flo(tmp_path / "a.flo", flow)
    raw = (tmp_path / "a.flo").read_bytes()
    assert struct.unpack("<fii", raw[:12]) == (202021.25, 3, 2)
    assert len(raw) == 12 + 2 * 3 * 2 * 4
    assert struct.unpack("<ff", raw[-8:]) == (7.5, -1.0)


def test_png_validity_channel(tmp_path):
    flow = np.ones((4, 5, 2), np.float32)
    valid = np.ones((4, 5), bool)
    valid[0, 0] = False
    fl.write_flow_png(tmp_path / "v.png", flow, valid)
    back, v = fl.read_flow_png(tmp_path / "v.png")
    assert np.array_equal(v, valid) and back[0, 0].tolist() == [0.0, 0.0] and back[1, 1].tolist() == [1.0, 1.0]


def test_flow_io_errors(tmp_path):
    (tmp_path / "bad.flo").write_bytes(struct.pack("<fii", 123.0, 2, 2) + b"\0" * 32)
    with pytest.raises(ValueError, match="magic"):
        fl.read_flo(tmp_path / "bad.flo")
    (tmp_path / "short.flo").write_bytes(struct.pack("<fii", fl.FLO_MAGIC, 4, 4) + b"\0" * 8)
    with pytest.raises(ValueError, match="truncated"):
        fl.read_flo(tmp_path / "short.flo")
    with pytest.raises(FileNotFoundError, match="missing.flo"):
        fl.read_flow(tmp_path / "missing.flo")
    np.save(tmp_path / "wrong.npy", np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        fl.read_flow(tmp_path / "wrong.npy")
    with pytest.raises(ValueError, match="unknown flow file type"):
        fl.read_flow(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="NaN"):
        fl.write_flow(tmp_path / "n.npy", np.full((2, 2, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match="16-bit PNG range"):
        fl.write_flow(tmp_path / "big.png", np.full((2, 2, 2), 600.0, np.float32))
    # A failed write leaves an existing file untouched.
    good = np.ones((2, 2, 2), np.float32)
    fl.write_flow(tmp_path / "keep.npy", good)
    with pytest.raises(ValueError):
        fl.write_flow(tmp_path / "keep.npy", np.full((2, 2, 2), np.inf, np.float32))
    assert np.array_equal(fl.read_flow(tmp_path / "keep.npy"), good)


def test_npy_channel_first_is_accepted(tmp_path, rng):
    flow = rng.normal(size=(2, 6, 7)).astype(np.float32)
    np.save(tmp_path / "cf.npy", flow)
    assert np.array_equal(fl.read_flow(tmp_path / "cf.npy"), flow.transpose(1, 2, 0))


# --------------------------------------------------------------------------- colours
def test_colorwheel_axis_directions():
    # flow_vis convention: right = red, down = yellow-orange, left = cyan-blue, up = violet.
    flow = np.zeros((1, 4, 2), np.float32)
    flow[0, 0] = (1, 0)  # right
    flow[0, 1] = (0, 1)  # down
    flow[0, 2] = (-1, 0)  # left
    flow[0, 3] = (0, -1)  # up
    rgb = fl.flow_to_color(flow)
    assert rgb[0, 0].tolist() == [255, 0, 0]
    assert rgb[0, 1].tolist() == [255, 229, 0]
    assert rgb[0, 2].tolist() == [0, 209, 255]
    assert rgb[0, 3].tolist() == [88, 0, 255]
    assert fl.flow_to_color(flow, bgr=True)[0, 0].tolist() == [0, 0, 255]
    # Zero flow is white.
    assert fl.flow_to_color(np.zeros((2, 2, 2), np.float32)).min() == 255


def test_colors_match_flow_vis_package(rng):
    flow_vis = pytest.importorskip("flow_vis")
    flow = rng.normal(0, 5, size=(20, 30, 2)).astype(np.float32)
    assert np.array_equal(fl.make_colorwheel(), flow_vis.make_colorwheel())
    ours = fl.flow_to_color(flow).astype(int)
    ref = flow_vis.flow_to_color(flow).astype(int)
    assert np.abs(ours - ref).max() <= 1  # float64 vs float32 rounding at floor()


def test_fixed_max_radius():
    flow = np.zeros((1, 2, 2), np.float32)
    flow[0, 0] = (2, 0)
    flow[0, 1] = (8, 0)
    rgb = fl.flow_to_color(flow, max_radius=4.0)
    assert rgb[0, 0].tolist() == [255, 127, 127]  # half saturation
    assert rgb[0, 1].tolist() == [191, 0, 0]  # beyond the radius: darkened x0.75
    with pytest.raises(ValueError):
        fl.flow_to_color(flow, max_radius=0)


def test_end_point_error():
    a = torch.zeros(2, 2, 4, 4)
    b = torch.zeros(2, 2, 4, 4)
    b[1, 0] = 3.0
    b[1, 1] = 4.0
    assert torch.allclose(fl.end_point_error(a, b), torch.tensor([0.0, 5.0]))
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2] = 1
    assert torch.allclose(fl.end_point_error(a, b, mask), torch.tensor([0.0, 5.0]))


def test_mesh_regularize_keeps_mesh_flows_and_removes_ripples() -> None:
    from stablemotion.core.flow import mesh_regularize, mesh_to_flow, rigid_mesh

    mesh = rigid_mesh(3, 4, 48, 64)
    mesh[1, 2] += (3.0, -2.0)
    smooth = mesh_to_flow(mesh, 48, 64)
    # a per-cell homography flow on the fitted grid is reproduced up to the bilinear fit of its vertices
    err = (mesh_regularize(smooth, cells=(3, 4), smoothness=0.0) - smooth).abs()
    assert float(err.mean()) < 0.15 and float(err.max()) < 1.0
    ripple = smooth.clone()
    ripple[0] += torch.sin(torch.arange(64.0) * 1.7).view(1, -1)  # a 1 px zig-zag along x
    out = mesh_regularize(ripple[None], cells=(3, 4), smoothness=0.0)[0]
    lap = lambda f: (f[:, 1:-1, 2:] + f[:, 1:-1, :-2] - 2 * f[:, 1:-1, 1:-1]).abs().mean()  # noqa: E731
    assert float(lap(out)) < 0.1 * float(lap(ripple))
    assert float((out - smooth).abs().mean()) < 0.3
    with pytest.raises(ValueError, match="NaN"):
        mesh_regularize(torch.full((2, 8, 8), float("nan")))


def test_snap_mesh_boundary_moves_the_outline_onto_content() -> None:
    from stablemotion.core.flow import mesh_to_flow, rigid_mesh, snap_mesh_boundary, warp

    h, w = 48, 64
    valid = np.ones((h, w), bool)
    valid[:6, 40:] = False  # an empty notch at the top right, as stitched panoramas have
    valid[:, :3] = False  # and a thin empty band along the left edge
    mesh = rigid_mesh(6, 8, h, w)
    snapped = snap_mesh_boundary(mesh, valid, margin=0.5)
    # The border of the warped output samples only content ...
    flow = mesh_to_flow(snapped, h, w)
    sampled = warp(torch.from_numpy(valid.astype(np.float32))[None, None], flow[None], padding="zeros")[0, 0]
    ring = torch.ones(h, w, dtype=torch.bool)
    ring[2:-2, 2:-2] = False
    assert float((sampled[ring] < 0.5).float().mean()) == 0.0
    before = warp(torch.from_numpy(valid.astype(np.float32))[None, None], mesh_to_flow(mesh, h, w)[None],
                  padding="zeros")[0, 0]
    assert float((before[ring] < 0.5).float().mean()) > 0.05
    # ... only the sides that needed it moved, inwards, and the push fades towards the centre.
    assert np.allclose(snapped[-1, :, 1], mesh[-1, :, 1]) and np.allclose(snapped[:, -1, 0], mesh[:, -1, 0])
    assert (snapped[0, 5:, 1] > mesh[0, 5:, 1]).all() and np.allclose(snapped[0, :4, 1], mesh[0, :4, 1])
    assert (snapped[:, 0, 0] >= 3.0).all()
    left_push = snapped[3, :, 0] - mesh[3, :, 0]
    assert left_push[0] > left_push[2] > left_push[4] - 1e-9 >= -1e-9
    # A fully valid image leaves the mesh alone; bad shapes are refused.
    assert np.array_equal(snap_mesh_boundary(mesh, np.ones((h, w), bool)), mesh)
    with pytest.raises(ValueError, match="valid must be"):
        snap_mesh_boundary(mesh, np.ones((h, w, 3), bool))


def test_mesh_regularize_with_a_content_mask_keeps_the_border_on_content() -> None:
    from stablemotion.core.flow import mesh_regularize, warp

    h, w = 48, 64
    valid = torch.ones(1, h, w)
    valid[:, -5:, :20] = 0  # empty corner at the bottom left
    flow = torch.zeros(1, 2, h, w)
    plain = mesh_regularize(flow, cells=(6, 8))
    snapped = mesh_regularize(flow, cells=(6, 8), valid=valid)
    assert torch.allclose(plain, flow, atol=1e-4)

    def left(f: torch.Tensor) -> float:
        s = warp(valid[None], f, padding="zeros")[0, 0]
        ring = torch.ones(h, w, dtype=torch.bool)
        ring[2:-2, 2:-2] = False
        return float((s[ring] < 0.5).float().mean())

    assert left(plain) > 0.05 and left(snapped) == 0.0
    with pytest.raises(ValueError, match="valid must be"):
        mesh_regularize(flow, cells=(6, 8), valid=torch.ones(3, h, w))


# --------------------------------------------------------------------------- the module's split
def test_every_name_of_flow_stays_importable_from_it() -> None:
    """flow.py was split into grid, flow_checks, mesh, visualize and io.flow_files; the names
    it exported are still there, and are the objects of their new homes."""
    from stablemotion.core import mesh, visualize
    from stablemotion.io import flow_files

    for name in fl.__all__:
        assert hasattr(fl, name), name
    for home in (mesh, visualize, flow_files):
        for name in set(home.__all__) & set(fl.__all__):
            assert getattr(fl, name) is getattr(home, name), name
    assert fl.read_flow is flow_files.read_flow and fl.flow_to_color is visualize.flow_to_color
