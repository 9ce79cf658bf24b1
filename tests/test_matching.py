"""Tests of sd4match_utils.matching against plain-loop reference implementations (float64 numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sd4match_utils.matching import (
    MATCHERS,
    cosine_maps,
    grid_to_pixel,
    l2_normalize,
    match,
    match_all,
    pixel_to_grid,
    sample_descriptors,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IMG = 100  # image side used by most tests (pixel = x_f · 99 / (w − 1))


def _feat(c: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(c, h, w, generator=g)


def _rand_kps(n: int, seed: int, size: int = IMG) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, generator=g) * (size - 1)


# ------------------------------------------------------------------------------------------------------------
# plain-loop references
# ------------------------------------------------------------------------------------------------------------


def ref_sample(feat: np.ndarray, x: float, y: float) -> np.ndarray:
    """Bilinear interpolation of feat (C, h, w) at (x, y), written out with scalars; clamped to the border."""
    _, h, w = feat.shape
    x = min(max(x, 0.0), w - 1.0)
    y = min(max(y, 0.0), h - 1.0)
    xa, ya = int(math.floor(x)), int(math.floor(y))
    xb, yb = min(xa + 1, w - 1), min(ya + 1, h - 1)
    ax, ay = x - xa, y - ya
    out = np.zeros(feat.shape[0])
    for xi, wx in ((xa, 1 - ax), (xb, ax)):
        for yi, wy in ((ya, 1 - ay), (yb, ay)):
            out = out + wx * wy * feat[:, yi, xi]
    return out


def ref_sim(desc: np.ndarray, trg: np.ndarray) -> np.ndarray:
    """Cosine map (h, w) with the +1e-6 normalisation, one cell at a time."""
    _, h, w = trg.shape
    d = desc / (np.sqrt((desc**2).sum()) + 1e-6)
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            v = trg[:, i, j]
            out[i, j] = float(d @ (v / (np.sqrt((v**2).sum()) + 1e-6)))
    return out


def ref_argmax(sim: np.ndarray) -> tuple[int, int]:
    best, bx, by = -np.inf, 0, 0
    for i in range(sim.shape[0]):
        for j in range(sim.shape[1]):
            if sim[i, j] > best:
                best, bx, by = sim[i, j], j, i
    return bx, by


def ref_expect(logits: dict[tuple[int, int], float]) -> tuple[float, float]:
    """Expected (x, y) under softmax of {(x, y): logit}."""
    m = max(logits.values())
    z = sum(math.exp(v - m) for v in logits.values())
    ex = sum(x * math.exp(v - m) for (x, _), v in logits.items()) / z
    ey = sum(y * math.exp(v - m) for (_, y), v in logits.items()) / z
    return ex, ey


def ref_match(src: np.ndarray, trg: np.ndarray, kp: tuple[float, float], method: str, img: int = IMG, **kw):
    """One keypoint through one matcher, scalar code; returns (x, y) in pixels."""
    beta = kw.get("beta", 0.04)
    _, h, w = src.shape
    _, ht, wt = trg.shape
    xs, ys = kp[0] * (w - 1) / (img - 1), kp[1] * (h - 1) / (img - 1)
    to_px = lambda x, y: (x * (img - 1) / (wt - 1), y * (img - 1) / (ht - 1))  # noqa: E731
    if method == "bilinear":
        x = min(max(xs, 0.0), w - 1.0)
        y = min(max(ys, 0.0), h - 1.0)
        x0, y0 = min(int(math.floor(x)), w - 2), min(int(math.floor(y)), h - 2)
        px = py = 0.0
        for xi in (x0, x0 + 1):
            for yi in (y0, y0 + 1):
                weight = (1 - abs(x - xi)) * (1 - abs(y - yi))
                bx, by = ref_argmax(ref_sim(src[:, yi, xi], trg))
                px, py = px + weight * bx, py + weight * by
        return to_px(px, py)
    sim = ref_sim(ref_sample(src, xs, ys), trg)
    bx, by = ref_argmax(sim)
    cells = [(j, i) for i in range(ht) for j in range(wt)]
    if method == "nn":
        return to_px(bx, by)
    if method == "softmax":
        return to_px(*ref_expect({(j, i): sim[i, j] / beta for j, i in cells}))
    if method == "kernel_softmax":
        sig = kw.get("kernel_sigma", 7.0)
        k = {(j, i): math.exp(-((j - bx) ** 2 + (i - by) ** 2) / (2 * sig**2)) for j, i in cells}
        return to_px(*ref_expect({(j, i): sim[i, j] * k[(j, i)] / beta for j, i in cells}))
    if method == "window_softargmax":
        r = kw.get("window", 3)
        win = [(j, i) for j, i in cells if abs(j - bx) <= r and abs(i - by) <= r]
        return to_px(*ref_expect({(j, i): sim[i, j] / beta for j, i in win}))
    if method == "mutual_nn":
        radius = kw.get("mnn_radius", 1.5)
        best, pick = -np.inf, None
        for j, i in cells:
            back = ref_sim(trg[:, i, j], src)
            sx, sy = ref_argmax(back)
            if math.hypot(sx - xs, sy - ys) <= radius and sim[i, j] > best:
                best, pick = sim[i, j], (j, i)
        return to_px(*(pick if pick is not None else (bx, by)))
    raise AssertionError(method)


# ------------------------------------------------------------------------------------------------------------
# coordinates
# ------------------------------------------------------------------------------------------------------------


def test_corners_map_to_corners():
    px = torch.tensor([[0.0, 0.0], [767.0, 767.0], [767.0, 0.0]])
    grid = pixel_to_grid(px, 768, (48, 48))
    torch.testing.assert_close(grid, torch.tensor([[0.0, 0.0], [47.0, 47.0], [47.0, 0.0]]))
    torch.testing.assert_close(grid_to_pixel(grid, 768, (48, 48)), px)


def test_align_corners_scale_value():
    # x_f = x · (w − 1)/(W − 1): pixel 383.5 (image centre) is cell 23.5 (grid centre), not 383.5/16 = 23.97
    grid = pixel_to_grid(torch.tensor([[383.5, 100.0]], dtype=torch.float64), 768, (48, 48))
    torch.testing.assert_close(grid, torch.tensor([[23.5, 100.0 * 47 / 767]], dtype=torch.float64))


def test_round_trip_non_square():
    xy = torch.rand(50, 2, dtype=torch.float64) * torch.tensor([639.0, 479.0], dtype=torch.float64)
    img_hw, grid_hw = (480, 640), (30, 40)
    grid = pixel_to_grid(xy, img_hw, grid_hw)
    # x uses the widths, y the heights
    torch.testing.assert_close(grid[:, 0], xy[:, 0] * 39 / 639)
    torch.testing.assert_close(grid[:, 1], xy[:, 1] * 29 / 479)
    torch.testing.assert_close(grid_to_pixel(grid, img_hw, grid_hw), xy)


def test_coordinate_validation():
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        pixel_to_grid(torch.zeros(3, 3), 768, (48, 48))
    with pytest.raises(ValueError, match="at least 2"):
        grid_to_pixel(torch.zeros(3, 2), 768, (1, 48))
    with pytest.raises(ValueError, match="img_size"):
        pixel_to_grid(torch.zeros(3, 2), (768, 768, 3), (48, 48))


# ------------------------------------------------------------------------------------------------------------
# sampling and similarity
# ------------------------------------------------------------------------------------------------------------


def test_sample_descriptors_matches_loop_bilinear():
    feat = _feat(5, 6, 8, seed=0)
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(40, 2, generator=g) * torch.tensor([7.0, 5.0])
    pts[0] = torch.tensor([7.0, 5.0])  # far corner
    pts[1] = torch.tensor([6.5, 5.0])  # on the bottom edge
    out = sample_descriptors(feat, pts)
    assert out.shape == (40, 5) and out.dtype == torch.float32
    ref = np.stack([ref_sample(feat.double().numpy(), float(x), float(y)) for x, y in pts])
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)


def test_sample_descriptors_at_integer_points_is_the_cell():
    feat = _feat(7, 5, 6, seed=2)
    ys, xs = torch.meshgrid(torch.arange(5), torch.arange(6), indexing="ij")
    pts = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float()
    out = sample_descriptors(feat, pts)
    assert torch.equal(out, feat.reshape(7, -1).T)  # interpolated in float64: exactly the cell


def test_sample_descriptors_agrees_with_grid_sample_border():
    feat = _feat(4, 6, 9, seed=3)
    pts = torch.rand(30, 2) * torch.tensor([12.0, 9.0]) - 2.0  # some outside the grid
    norm = pts / torch.tensor([8.0, 5.0]) * 2 - 1
    ref = F.grid_sample(feat[None], norm[None, None], align_corners=True, padding_mode="border")[0, :, 0].T
    torch.testing.assert_close(sample_descriptors(feat, pts), ref, atol=1e-5, rtol=1e-5)


def test_l2_normalize_uses_plus_eps():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-7, 0.0]])
    out = l2_normalize(x, dim=1)
    torch.testing.assert_close(out[0], torch.tensor([3.0, 4.0]) / (5.0 + 1e-6))
    assert torch.equal(out[1], torch.zeros(2))
    torch.testing.assert_close(out[2], torch.tensor([1e-7 / (1e-7 + 1e-6), 0.0]))  # not 1 as F.normalize


def test_cosine_maps_matches_per_cell_loop():
    trg = _feat(6, 4, 5, seed=4)
    desc = torch.randn(3, 6, generator=torch.Generator().manual_seed(5))
    out = cosine_maps(desc, trg)
    assert out.shape == (3, 4, 5)
    for n in range(3):
        np.testing.assert_allclose(out[n].numpy(), ref_sim(desc[n].double().numpy(), trg.double().numpy()), atol=1e-6)


def test_cosine_maps_channel_mismatch():
    with pytest.raises(ValueError, match="channels"):
        cosine_maps(torch.zeros(2, 5), torch.zeros(6, 4, 4))


# ------------------------------------------------------------------------------------------------------------
# matchers
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_nn_finds_shifted_cell(device):
    h = w = 12
    src = _feat(32, h, w, seed=6)
    dy, dx = 2, -3
    trg = torch.roll(src, shifts=(dy, dx), dims=(1, 2))  # trg[:, y + dy, x + dx] = src[:, y, x]
    cells = torch.tensor([[x, y] for y in range(h) for x in range(w)], dtype=torch.float32)
    kps = grid_to_pixel(cells, 768, (h, w))
    pred = match(src.to(device), trg.to(device), kps.to(device), 768, "nn").cpu()
    expected = torch.stack([(cells[:, 0] + dx) % w, (cells[:, 1] + dy) % h], 1)
    torch.testing.assert_close(pixel_to_grid(pred, 768, (h, w)), expected, atol=1e-4, rtol=0)
    # mutual_nn agrees, because every match of a shifted map is mutual
    pred_m = match(src.to(device), trg.to(device), kps.to(device), 768, "mutual_nn").cpu()
    torch.testing.assert_close(pred_m, pred)


def test_softmax_single_dominant_peak():
    h, w = 9, 11
    src = _feat(256, h, w, seed=7)
    trg = _feat(256, h, w, seed=8)
    kp = torch.tensor([[37.3, 61.9]])
    desc = sample_descriptors(src, pixel_to_grid(kp, IMG, (h, w)))[0]
    trg[:, 6, 3] = desc  # the only cell with cosine 1; the rest is ~N(0, 1/16)
    for method in ("softmax", "kernel_softmax", "window_softargmax", "nn"):
        pred = match(src, trg, kp, IMG, method)
        torch.testing.assert_close(pred, grid_to_pixel(torch.tensor([[3.0, 6.0]]), IMG, (h, w)), atol=1e-2, rtol=0)


@pytest.mark.parametrize("method", MATCHERS)
def test_matchers_match_loop_reference(method):
    # non-square maps of different sizes catch x/y and source/target mix-ups
    src = _feat(12, 7, 9, seed=10)
    trg = _feat(12, 8, 6, seed=11)
    kps = _rand_kps(6, seed=12)
    kps[0] = torch.tensor([0.0, 0.0])
    kps[1] = torch.tensor([99.0, 99.0])
    pred = match(src, trg, kps, IMG, method)
    assert pred.shape == (6, 2) and pred.dtype == torch.float32
    ref = [ref_match(src.double().numpy(), trg.double().numpy(), (float(x), float(y)), method) for x, y in kps]
    np.testing.assert_allclose(pred.numpy(), np.array(ref), atol=2e-3)


@pytest.mark.parametrize(
    "method,kw",
    [
        ("kernel_softmax", {"kernel_sigma": 2.0, "beta": 0.1}),
        ("window_softargmax", {"window": 1}),
        ("window_softargmax", {"window": 0}),
        ("mutual_nn", {"mnn_radius": 3.0}),
        ("mutual_nn", {"mnn_radius": 0.0}),
    ],
)
def test_matcher_parameters_match_loop_reference(method, kw):
    src = _feat(8, 6, 7, seed=13)
    trg = _feat(8, 7, 6, seed=14)
    kps = _rand_kps(5, seed=15)
    pred = match(src, trg, kps, IMG, method, **kw)
    ref = [ref_match(src.double().numpy(), trg.double().numpy(), (float(x), float(y)), method, **kw) for x, y in kps]
    np.testing.assert_allclose(pred.numpy(), np.array(ref), atol=2e-3)


def test_limits_reduce_to_other_matchers():
    src, trg, kps = _feat(8, 6, 6, seed=16), _feat(8, 6, 6, seed=17), _rand_kps(7, seed=18)
    out = match_all(src, trg, kps, IMG)
    # a huge kernel is flat, a huge window is the whole map: both become plain softmax
    torch.testing.assert_close(match(src, trg, kps, IMG, "kernel_softmax", kernel_sigma=1e6), out["softmax"])
    torch.testing.assert_close(match(src, trg, kps, IMG, "window_softargmax", window=100), out["softmax"])
    # a zero window is the argmax cell
    torch.testing.assert_close(match(src, trg, kps, IMG, "window_softargmax", window=0), out["nn"])


def test_bilinear_at_integer_location_is_nn():
    src, trg = _feat(8, 6, 6, seed=19), _feat(8, 6, 6, seed=20)
    kps = grid_to_pixel(torch.tensor([[2.0, 3.0], [5.0, 5.0], [0.0, 4.0]]), IMG, (6, 6))
    # float32 round trip leaves ~1e-7 cell of weight on a neighbour
    pred_b, pred_nn = match(src, trg, kps, IMG, "bilinear"), match(src, trg, kps, IMG, "nn")
    torch.testing.assert_close(pred_b, pred_nn, atol=1e-3, rtol=0)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def test_mutual_nn_prefers_a_mutual_cell_over_the_nn():
    c, h, w = 256, 6, 6
    src = _feat(c, h, w, seed=21)
    src = src / src.norm(dim=0, keepdim=True)
    trg = _feat(c, h, w, seed=22) / math.sqrt(c)
    p, q = (1, 1), (4, 4)  # (x, y) cells of the keypoint and of a far source cell
    noise = torch.randn(c, generator=torch.Generator().manual_seed(23))
    # cell (0, 5): best score for p (cos ≈ 0.6) but it looks more like q (cos ≈ 0.8) -> not mutual
    trg[:, 5, 0] = _unit(0.6 * src[:, p[1], p[0]] + 0.8 * src[:, q[1], q[0]])
    # cell (3, 2): lower score for p (cos ≈ 0.5) but its own nearest source cell is p -> mutual
    trg[:, 2, 3] = _unit(0.5 * src[:, p[1], p[0]] + 0.866 * _unit(noise))
    kp = grid_to_pixel(torch.tensor([[1.0, 1.0]]), IMG, (h, w))
    out = match_all(src, trg, kp, IMG, ("nn", "mutual_nn"))
    torch.testing.assert_close(out["nn"], grid_to_pixel(torch.tensor([[0.0, 5.0]]), IMG, (h, w)))
    torch.testing.assert_close(out["mutual_nn"], grid_to_pixel(torch.tensor([[3.0, 2.0]]), IMG, (h, w)))


def test_mutual_nn_falls_back_to_nn_without_candidates():
    c, h, w = 64, 6, 6
    src = _feat(c, h, w, seed=24)
    far = src[:, 5, 5]
    g = torch.Generator().manual_seed(25)
    # every target cell is a small perturbation of the source cell (5, 5): all map back there
    trg = far[:, None, None] + 0.05 * torch.randn(c, h, w, generator=g)
    kp = grid_to_pixel(torch.tensor([[0.5, 0.0]]), IMG, (h, w))  # far from (5, 5)
    out = match_all(src, trg, kp, IMG, ("nn", "mutual_nn"))
    torch.testing.assert_close(out["mutual_nn"], out["nn"])
    # with a radius that reaches (5, 5) every cell is a candidate, and the best candidate is the nn again
    torch.testing.assert_close(match(src, trg, kp, IMG, "mutual_nn", mnn_radius=10.0), out["nn"])


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_input_gives_float32_close_to_fp32(device):
    h = w = 10
    src = _feat(64, h, w, seed=26)
    trg = torch.roll(src, shifts=(1, 2), dims=(1, 2)) + 0.1 * _feat(64, h, w, seed=27)
    kps = _rand_kps(8, seed=28, size=768)
    ref = match_all(src.to(device), trg.to(device), kps.to(device), 768)
    low = match_all(src.to(device, torch.bfloat16), trg.to(device, torch.bfloat16), kps.to(device), 768)
    for m in MATCHERS:
        assert low[m].dtype == torch.float32 and low[m].device.type == device
        torch.testing.assert_close(low[m], ref[m], atol=1.0, rtol=0)  # ≤ 1 px of 768 (a cell is 85 px)


def test_match_all_equals_single_calls():
    src, trg, kps = _feat(8, 6, 7, seed=29), _feat(8, 5, 6, seed=30), _rand_kps(5, seed=31)
    out = match_all(src, trg, kps, IMG, beta=0.1, window=2)
    assert tuple(out) == MATCHERS
    for m in MATCHERS:
        torch.testing.assert_close(out[m], match(src, trg, kps, IMG, m, beta=0.1, window=2))


def test_empty_keypoints():
    out = match_all(_feat(4, 5, 5, seed=32), _feat(4, 5, 5, seed=33), torch.zeros(0, 2), IMG)
    assert all(v.shape == (0, 2) for v in out.values())


def test_validation():
    src, trg, kps = _feat(8, 6, 6, seed=34), _feat(8, 6, 6, seed=35), _rand_kps(2, seed=36)
    with pytest.raises(ValueError, match="kernel_softmax.*window_softargmax.*mutual_nn"):
        match(src, trg, kps, IMG, "argmax")
    with pytest.raises(ValueError, match="channels"):
        match(src, trg[:4], kps, IMG, "nn")
    with pytest.raises(ValueError, match=r"\(C, h, w\)"):
        match(src[0], trg, kps, IMG)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        match(src, trg, kps[:, :1], IMG)
    with pytest.raises(ValueError, match="beta"):
        match(src, trg, kps, IMG, "softmax", beta=0.0)
    with pytest.raises(ValueError, match="window"):
        match(src, trg, kps, IMG, "window_softargmax", window=-1)


# ------------------------------------------------------------------------------------------------------------
# batches: (B, C, h, w) maps, (B, N, 2) points and a (B, N) mask give each pair what the single-pair call gives
# ------------------------------------------------------------------------------------------------------------


def _padded_batch(seed: int, counts: list[int], src_hw=(7, 9), trg_hw=(8, 6), c: int = 12, img: int = IMG):
    """Random maps, per-pair keypoint lists (with image corners and points just outside) and their padding."""
    g = torch.Generator().manual_seed(seed)
    b = len(counts)
    src = torch.randn(b, c, *src_hw, generator=g)
    trg = torch.randn(b, c, *trg_hw, generator=g)
    extra = torch.tensor([[0.0, 0.0], [img - 1.0, img - 1.0], [img + 0.5, 3.0], [-0.7, img / 2]])
    kps = [torch.cat([extra, torch.rand(n, 2, generator=g) * (img - 1)])[: n] for n in counts]
    n_max = max(counts)
    padded = torch.full((b, n_max, 2), float("nan"))  # the padding's content must not matter
    mask = torch.zeros(b, n_max, dtype=torch.bool)
    for i, k in enumerate(kps):
        padded[i, : len(k)] = k
        mask[i, : len(k)] = True
    return src, trg, kps, padded, mask


def test_sample_descriptors_batched_matches_loop_bilinear():
    g = torch.Generator().manual_seed(40)
    feat = torch.randn(3, 5, 6, 8, generator=g)
    pts = torch.rand(3, 25, 2, generator=g) * torch.tensor([11.0, 9.0]) - 2.0  # some outside the grid
    pts[0, 0] = torch.tensor([7.0, 5.0])  # far corner
    pts[1, 1] = torch.tensor([6.5, 5.0])  # on the bottom edge
    pts[2, 2] = torch.tensor([0.0, 2.25])  # on the left edge
    out = sample_descriptors(feat, pts)
    assert out.shape == (3, 25, 5) and out.dtype == torch.float32
    for b in range(3):
        ref = np.stack([ref_sample(feat[b].double().numpy(), float(x), float(y)) for x, y in pts[b]])
        np.testing.assert_allclose(out[b].numpy(), ref, atol=1e-5)


def test_cosine_maps_batched_matches_per_cell_loop():
    g = torch.Generator().manual_seed(41)
    trg = torch.randn(2, 6, 4, 5, generator=g)
    desc = torch.randn(2, 3, 6, generator=g)
    out = cosine_maps(desc, trg)
    assert out.shape == (2, 3, 4, 5)
    for b in range(2):
        for n in range(3):
            ref = ref_sim(desc[b, n].double().numpy(), trg[b].double().numpy())
            np.testing.assert_allclose(out[b, n].numpy(), ref, atol=1e-6)


@pytest.mark.parametrize("kw", [{}, {"beta": 0.1, "kernel_sigma": 2.0, "window": 1, "mnn_radius": 3.0}])
def test_match_all_batched_equals_single_pair_calls(kw):
    src, trg, kps, padded, mask = _padded_batch(42, [6, 3, 1])
    out = match_all(src, trg, padded, IMG, mask=mask, **kw)
    for m in MATCHERS:
        assert out[m].shape == (3, 6, 2) and out[m].dtype == torch.float32
    for b, k in enumerate(kps):
        single = match_all(src[b], trg[b], k, IMG, **kw)
        for m in MATCHERS:
            torch.testing.assert_close(out[m][b, : len(k)], single[m], atol=1e-4, rtol=0)
            assert torch.isnan(out[m][b, len(k) :]).all()  # padded rows


def test_match_all_batched_matches_loop_reference():
    # the batched call against the scalar reference directly (not only against the single-pair path)
    src, trg, kps, padded, mask = _padded_batch(43, [4, 2])
    out = match_all(src, trg, padded, IMG, mask=mask)
    for b, k in enumerate(kps):
        for m in MATCHERS:
            ref = [ref_match(src[b].double().numpy(), trg[b].double().numpy(), (float(x), float(y)), m) for x, y in k]
            np.testing.assert_allclose(out[m][b, : len(k)].numpy(), np.array(ref), atol=2e-3)


def test_match_batched_without_mask_and_empty():
    src, trg, kps, _, _ = _padded_batch(44, [5, 5])
    stacked = torch.stack(kps)
    pred = match(src, trg, stacked, IMG, "kernel_softmax")
    assert pred.shape == (2, 5, 2)
    for b in range(2):
        torch.testing.assert_close(pred[b], match(src[b], trg[b], kps[b], IMG, "kernel_softmax"), atol=1e-4, rtol=0)
    empty = match_all(src, trg, torch.zeros(2, 0, 2), IMG)
    assert all(v.shape == (2, 0, 2) for v in empty.values())
    # an unbatched mask drops the point from an unbatched call too
    one = match(src[0], trg[0], kps[0], IMG, "nn", mask=torch.tensor([True, False, True, True, True]))
    assert torch.isnan(one[1]).all() and torch.isfinite(one[[0, 2, 3, 4]]).all()


def test_pixel_to_grid_batched():
    xy = torch.rand(3, 4, 2) * 767
    torch.testing.assert_close(pixel_to_grid(xy, 768, (48, 48)), xy * 47 / 767)
    torch.testing.assert_close(grid_to_pixel(pixel_to_grid(xy, 768, (48, 48)), 768, (48, 48)), xy)


def test_batched_validation():
    src, trg, _, padded, mask = _padded_batch(45, [3, 2])
    with pytest.raises(ValueError, match="mix of batched and unbatched"):
        match_all(src, trg[0], padded, IMG)
    with pytest.raises(ValueError, match="mix of batched and unbatched"):
        match_all(src, trg, padded[0], IMG)
    with pytest.raises(ValueError, match="batch sizes differ"):
        match_all(src, trg[:1], padded, IMG)
    with pytest.raises(ValueError, match="mask"):
        match_all(src, trg, padded, IMG, mask=mask[:, :2])
    with pytest.raises(TypeError, match="boolean"):
        match_all(src, trg, padded, IMG, mask=mask.float())
    with pytest.raises(ValueError, match=r"\(C, h, w\) or \(B, C, h, w\)"):
        sample_descriptors(src[None], padded)
    with pytest.raises(ValueError, match=r"\(N, 2\) or \(B, N, 2\)"):
        pixel_to_grid(torch.zeros(2, 3, 3), 768, (48, 48))
