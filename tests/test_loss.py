"""Tests of the Gaussian-window cross-entropy (``sd4match_utils.loss``, SPEC §5).

The reference below is written independently with plain Python loops and float64 arithmetic: an explicit
bilinear interpolation, an explicit softmax with ``math.exp`` over all cells, and explicit loops over keypoints
and window rows / columns.
"""

from __future__ import annotations

import math

import pytest
import torch

from sd4match_utils.loss import BETA, SIGMA, WINDOW, batch_loss, gaussian_window, pair_loss

# --------------------------------------------------------------------------------------------------------------
# brute-force reference
# --------------------------------------------------------------------------------------------------------------


def _bilerp(grid, x, y):
    """Bilinear interpolation (align corners) of a ``grid[y][x]`` list of floats or of lists of floats."""
    h, w = len(grid), len(grid[0])
    x = min(max(x, 0.0), w - 1.0)
    y = min(max(y, 0.0), h - 1.0)
    x0 = min(int(math.floor(x)), w - 2)
    y0 = min(int(math.floor(y)), h - 2)
    ax, ay = x - x0, y - y0
    corners = [
        (grid[y0][x0], (1 - ax) * (1 - ay)),
        (grid[y0][x0 + 1], ax * (1 - ay)),
        (grid[y0 + 1][x0], (1 - ax) * ay),
        (grid[y0 + 1][x0 + 1], ax * ay),
    ]
    if isinstance(grid[0][0], list):
        return [sum(v[c] * b for v, b in corners) for c in range(len(grid[0][0]))]
    return sum(v * b for v, b in corners)


def _to_grid(feat):
    """``(C, h, w)`` tensor → ``h × w`` nested list of channel lists (float64 Python floats)."""
    return feat.to(torch.float64).permute(1, 2, 0).tolist()


def _norm(v):
    return math.sqrt(sum(a * a for a in v))


def reference_pair_loss(src_feat, trg_feat, src_kps, trg_kps, img_size, beta=BETA, window=WINDOW, sigma=SIGMA):
    """Brute-force loss of one pair in float64.

    Returns the loss, the number of valid keypoints and the smallest log-probability met at a valid window point.
    """
    H, W = (img_size, img_size) if isinstance(img_size, int) else img_size
    src, trg = _to_grid(src_feat), _to_grid(trg_feat)
    hs, ws = len(src), len(src[0])
    h, w = len(trg), len(trg[0])
    r = window // 2
    total, n_valid, min_log = 0.0, 0, math.inf
    for (sx, sy), (tx, ty) in zip(src_kps.tolist(), trg_kps.tolist()):
        # source descriptor
        desc = _bilerp(src, sx * (ws - 1) / (W - 1), sy * (hs - 1) / (H - 1))
        dn = _norm(desc) + 1e-6
        # explicit softmax of cos / beta over all target cells
        logits = [[0.0] * w for _ in range(h)]
        for i in range(h):
            for j in range(w):
                cell = trg[i][j]
                cos = sum(a * b for a, b in zip(desc, cell)) / (dn * (_norm(cell) + 1e-6))
                logits[i][j] = cos / beta
        m = max(max(row) for row in logits)
        z = sum(math.exp(v - m) for row in logits for v in row)
        prob = [[math.exp(v - m) / z for v in row] for row in logits]
        # window around the continuous ground truth
        gx, gy = tx * (w - 1) / (W - 1), ty * (h - 1) / (H - 1)
        kp_loss, any_valid = 0.0, False
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                qx, qy = gx + dx, gy + dy
                if not (0 < qx < w - 1 and 0 < qy < h - 1):
                    continue
                any_valid = True
                weight = math.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma)) / (2 * math.pi * sigma * sigma)
                log_pq = math.log(_bilerp(prob, qx, qy))
                min_log = min(min_log, log_pq)
                kp_loss -= weight * log_pq
        if any_valid:
            total += kp_loss
            n_valid += 1
    return (total / n_valid if n_valid else 0.0), n_valid, min_log


# --------------------------------------------------------------------------------------------------------------
# gaussian_window
# --------------------------------------------------------------------------------------------------------------


def test_gaussian_window_offsets_and_weights():
    offsets, weights = gaussian_window(7, 1.5)
    assert offsets.shape == (49, 2) and weights.shape == (49,)
    assert offsets.dtype == torch.float32 and weights.dtype == torch.float32
    pairs = {(int(dx), int(dy)) for dx, dy in offsets.tolist()}
    assert pairs == {(dx, dy) for dx in range(-3, 4) for dy in range(-3, 4)}
    centre = offsets.abs().sum(dim=1) == 0
    assert int(centre.sum()) == 1
    assert weights[centre].item() == pytest.approx(1 / (2 * math.pi * 1.5**2), rel=1e-6)
    expected_sum = 0.0
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            expected_sum += math.exp(-(dx * dx + dy * dy) / (2 * 1.5**2)) / (2 * math.pi * 1.5**2)
    assert weights.sum().item() == pytest.approx(expected_sum, rel=1e-6)
    assert expected_sum == pytest.approx(0.965, abs=5e-4)  # not renormalised
    # each weight matches its own offset
    for (dx, dy), wgt in zip(offsets.tolist(), weights.tolist()):
        assert wgt == pytest.approx(math.exp(-(dx * dx + dy * dy) / 4.5) / (4.5 * math.pi), rel=1e-6)


def test_gaussian_window_rejects_bad_arguments():
    for size in (0, 4, -3, 2.5):
        with pytest.raises(ValueError):
            gaussian_window(size, 1.5)
    with pytest.raises(ValueError):
        gaussian_window(7, 0.0)
    offsets, weights = gaussian_window(1, 2.0)
    assert offsets.tolist() == [[0.0, 0.0]] and weights.item() == pytest.approx(1 / (8 * math.pi))


# --------------------------------------------------------------------------------------------------------------
# agreement with the brute-force reference
# --------------------------------------------------------------------------------------------------------------


def _random_case(seed, c, h, w, img_size, integer_cell=True):
    """Random maps and keypoints including border, outside and (optionally) integer-cell ground truths.

    ``integer_cell`` needs a whole number of pixels per cell in both directions, so that the keypoint lies
    *exactly* on a cell in float32 pixels and its window points exactly on the border.
    """
    H, W = (img_size, img_size) if isinstance(img_size, int) else img_size
    gen = torch.Generator().manual_seed(seed)
    src = torch.randn(c, h, w, generator=gen)
    trg = torch.randn(c, h, w, generator=gen)
    sx, sy = (W - 1) / (w - 1), (H - 1) / (h - 1)  # pixels per cell
    special = [
        [0.0, 0.0],  # top-left corner cell: the centre and many window points are on the border
        [W - 1.0, H - 1.0],  # bottom-right corner
        [0.4 * sx, 5.5 * sy],  # near the left border: some offsets on the other side
        [-2.3 * sx, 3.2 * sy],  # outside the image: only a few window points remain valid
        [-50.0 * sx, 4.0 * sy],  # far outside: every window point masked (keypoint not counted)
        [(w - 1.5) * sx, H - 1.0],  # half a cell from the right, on the bottom row
    ]
    if integer_cell:
        assert sx == int(sx) and sy == int(sy)
        special.append([3 * sx, 2 * sy])  # exactly on a cell: offsets land exactly on the border (masked)
    n_rand = 6
    n = n_rand + len(special)
    src_kps = torch.rand(n, 2, generator=gen, dtype=torch.float64) * torch.tensor([W - 1, H - 1])
    trg_rand = torch.rand(n_rand, 2, generator=gen, dtype=torch.float64) * torch.tensor([W - 1, H - 1])
    trg_kps = torch.cat([trg_rand, torch.tensor(special, dtype=torch.float64)])
    return src, trg, src_kps.float(), trg_kps.float(), img_size


@pytest.mark.parametrize(
    "seed,c,h,w,img_size,integer_cell",
    [
        (0, 8, 12, 12, 111, True),
        (1, 8, 10, 14, 118, True),
        (2, 5, 10, 14, (82, 118), True),
        (3, 4, 48, 48, 768, False),  # the paper's sizes (767/47 pixels per cell)
    ],
)
def test_pair_loss_matches_brute_force(seed, c, h, w, img_size, integer_cell):
    src, trg, src_kps, trg_kps, img_size = _random_case(seed, c, h, w, img_size, integer_cell)
    expected, n_valid, _ = reference_pair_loss(src, trg, src_kps, trg_kps, img_size)
    assert 0 < n_valid == len(trg_kps) - 1  # only the far-outside keypoint is dropped
    got = pair_loss(src, trg, src_kps, trg_kps, img_size)
    assert got.dtype == torch.float32 and got.ndim == 0
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_pair_loss_each_border_keypoint_matches_brute_force():
    """One keypoint at a time, so that a wrong mask on any single border case cannot hide in an average."""
    src, trg, src_kps, trg_kps, img_size = _random_case(4, 8, 12, 12, 111)
    for i in range(len(trg_kps)):
        expected, n_valid, _ = reference_pair_loss(src, trg, src_kps[i : i + 1], trg_kps[i : i + 1], img_size)
        got = pair_loss(src, trg, src_kps[i : i + 1], trg_kps[i : i + 1], img_size).item()
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-5), i
        if n_valid == 0:
            assert got == 0.0


def test_pair_loss_other_hyper_parameters_match_brute_force():
    src, trg, src_kps, trg_kps, img_size = _random_case(5, 6, 9, 11, 81)
    kw = dict(beta=0.1, window=5, sigma=2.0)
    expected, _, _ = reference_pair_loss(src, trg, src_kps, trg_kps, img_size, **kw)
    assert pair_loss(src, trg, src_kps, trg_kps, img_size, **kw).item() == pytest.approx(expected, rel=1e-5)


def test_pair_loss_exact_where_probabilities_underflow_float32():
    """With a tiny β most cell probabilities are far below float32's range; the log stays exact and finite."""
    src, trg, src_kps, trg_kps, img_size = _random_case(6, 8, 12, 12, 111)
    expected, _, min_log = reference_pair_loss(src, trg, src_kps, trg_kps, img_size, beta=0.004)
    assert min_log < math.log(1e-45)  # below float32's smallest positive value: a clamp or float32 p would fail
    src = src.clone().requires_grad_(True)
    got = pair_loss(src, trg, src_kps, trg_kps, img_size, beta=0.004)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    got.backward()
    assert torch.isfinite(src.grad).all() and src.grad.abs().sum() > 0


def test_border_decision_tolerates_rounding_of_the_grid_mapping():
    """A window point within 1e-6 cells of the border counts as on it; 1e-3 cells inside counts as inside.

    β = 1 here: with β = 0.04 neighbouring cells' probabilities can differ by e^50, and the log of a bilinear
    sample then moves visibly even for a 1e-8-cell shift, which would hide what is tested.
    """
    src, trg, src_kps, _, img = _random_case(11, 8, 12, 12, 111)
    kp = src_kps[:1].double()
    on = torch.tensor([[30.0, 20.0]], dtype=torch.float64)  # cell (3, 2): the dy = −2 row is exactly on y = 0
    hair = on + torch.tensor([[0.0, 1e-8 * 10]], dtype=torch.float64)  # 1e-8 cells lower
    inside = on + torch.tensor([[0.0, 1e-3 * 10]], dtype=torch.float64)  # 1e-3 cells lower
    l_on, l_hair, l_in = (pair_loss(src, trg, kp, t, img, beta=1.0).item() for t in (on, hair, inside))
    assert l_hair == pytest.approx(l_on, rel=1e-6)
    assert l_on == pytest.approx(reference_pair_loss(src, trg, kp, on, img, beta=1.0)[0], rel=1e-5)
    assert l_in == pytest.approx(reference_pair_loss(src, trg, kp, inside, img, beta=1.0)[0], rel=1e-5)
    assert abs(l_in - l_on) > 0.1  # the dy = −2 row (7 points) is included
    # the paper's sizes: pixel 767 is the last cell (47) whatever the rounding of 767 · 47/767
    gen = torch.Generator().manual_seed(12)
    s48, t48 = torch.randn(4, 48, 48, generator=gen), torch.randn(4, 48, 48, generator=gen)
    kps = torch.tensor([[100.0, 200.0], [300.0, 400.0]])
    edge = torch.tensor([[767.0, 300.0], [400.0, 767.0]])
    assert pair_loss(s48, t48, kps, edge, 768).item() == pytest.approx(
        reference_pair_loss(s48, t48, kps, edge, 768)[0], rel=1e-5
    )


# --------------------------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------------------------


def test_pair_loss_backpropagates_to_both_maps():
    src, trg, src_kps, trg_kps, img_size = _random_case(7, 8, 12, 12, 111)
    src.requires_grad_(True)
    trg.requires_grad_(True)
    loss = pair_loss(src, trg, src_kps, trg_kps, img_size)
    loss.backward()
    for g in (src.grad, trg.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def _descriptor(src, x, y):
    """Hand-written bilinear sample of a ``(C, h, w)`` map at grid point ``(x, y)`` (interior)."""
    x0, y0 = int(x), int(y)
    ax, ay = x - x0, y - y0
    return (
        src[:, y0, x0] * (1 - ax) * (1 - ay)
        + src[:, y0, x0 + 1] * ax * (1 - ay)
        + src[:, y0 + 1, x0] * (1 - ax) * ay
        + src[:, y0 + 1, x0 + 1] * ax * ay
    )


def _gibbs_minimum(sigma=SIGMA, window=WINDOW):
    """Smallest possible keypoint loss when all window points are valid cells: −Σ w·log(w / Σw)."""
    r = window // 2
    ws = [
        math.exp(-(dx * dx + dy * dy) / (2 * sigma**2)) / (2 * math.pi * sigma**2)
        for dy in range(-r, r + 1)
        for dx in range(-r, r + 1)
    ]
    total = sum(ws)
    return -sum(v * math.log(v / total) for v in ws)


def test_gradient_descent_on_the_target_map_lowers_the_loss():
    gen = torch.Generator().manual_seed(8)
    c, h, w, img = 16, 12, 12, 111
    src = torch.randn(c, h, w, generator=gen)
    trg = torch.randn(c, h, w, generator=gen)
    src_kps = torch.tensor([[30.0, 40.0], [70.0, 20.0], [55.0, 85.0]])
    trg_kps = torch.tensor([[50.0, 60.0], [40.0, 50.0], [60.0, 60.0]])  # cells (5, 6), (4, 5), (6, 6)
    gt = (trg_kps / 10).long()
    descs = [_descriptor(src, x / 10, y / 10) for x, y in src_kps.tolist()]

    def window_similarity(t):
        """Gaussian-weighted mean cosine of the 7×7 cells around each ground truth with its source descriptor."""
        out = []
        for dsc, (x, y) in zip(descs, gt.tolist()):
            num = den = 0.0
            for dy in range(-3, 4):
                for dx in range(-3, 4):
                    g = math.exp(-(dx * dx + dy * dy) / (2 * SIGMA**2))
                    num += g * torch.cosine_similarity(dsc, t[:, y + dy, x + dx], dim=0).item()
                    den += g
            out.append(num / den)
        return out

    free = trg.clone().requires_grad_(True)
    opt = torch.optim.SGD([free], lr=0.5)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = pair_loss(src, free, src_kps, trg_kps, img)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(b < a for a, b in zip(losses, losses[1:]))
    # the target cells around each ground truth have become more similar to its source descriptor (on
    # Gaussian-weighted average; the gt cell alone need not: an over-sharp peak is penalised by the target) ...
    before, after = window_similarity(trg), window_similarity(free.detach())
    assert all(a > b + 0.05 for b, a in zip(before, after))
    # ... and no map can go below the Gibbs bound (every window here is fully inside the grid)
    assert losses[-1] > _gibbs_minimum()


# --------------------------------------------------------------------------------------------------------------
# analytic sanity check
# --------------------------------------------------------------------------------------------------------------


def test_perfect_peak_gives_the_analytic_loss():
    """One-hot cell features: cos is 1 at the ground-truth cell and 0 elsewhere, so p is a sharp peak there."""
    h, w, img = 9, 11, 101  # 10 pixels per cell horizontally, 12.5 vertically (exact in float32)
    c = h * w
    trg = torch.eye(c).reshape(c, h, w)  # cell (i, j) is the one-hot vector e_{i·w + j}
    cells = [(4, 4), (5, 4), (6, 4)]  # (x, y): the whole 7×7 window lies strictly inside (1 ≤ q ≤ h − 2)
    src_kps = torch.tensor([[x * (img - 1) / (w - 1), y * (img - 1) / (h - 1)] for x, y in cells])
    trg_kps = src_kps.clone()
    src = trg.clone()  # the source descriptor at each keypoint is the one-hot vector of its gt cell
    beta = BETA
    e = 1 / (1 + 1e-6) ** 2 / beta  # cos of a unit vector with itself under the (‖·‖ + 1e-6) normalisation
    z = math.exp(e) + (c - 1)
    log_peak, log_other = e - math.log(z), -math.log(z)
    weights = [
        math.exp(-(dx * dx + dy * dy) / (2 * SIGMA**2)) / (2 * math.pi * SIGMA**2)
        for dy in range(-3, 4)
        for dx in range(-3, 4)
    ]
    centre = weights[24]
    expected = -(centre * log_peak + (sum(weights) - centre) * log_other)
    got = pair_loss(src, trg, src_kps, trg_kps, img).item()
    assert log_peak > -1e-8  # the peak holds essentially all the mass
    assert got == pytest.approx(expected, rel=1e-5)
    # the loss is dominated by the off-centre window points asking for mass the peak does not give them
    assert got == pytest.approx((sum(weights) - centre) * math.log(z), rel=1e-4)


def test_window_shaped_map_reaches_the_gibbs_minimum():
    """Cells whose cosine with the descriptor is ``1 − β·|o|²/(2σ²)`` in the window and −1 outside make
    ``p ∝ G`` on the window, the minimiser of the loss; the loss then equals ``−Σ w·log(w / Σw)``."""
    h, w, img = 12, 13, 121  # 10 pixels per cell horizontally, 120/11 vertically
    c = 4
    gx, gy = 6, 5
    d = torch.tensor([1.0, 0.0, 0.0, 0.0])
    u = torch.tensor([0.0, 1.0, 0.0, 0.0])
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    r2 = ((xs - gx) ** 2 + (ys - gy) ** 2).to(torch.float64)
    in_window = ((xs - gx).abs() <= 3) & ((ys - gy).abs() <= 3)
    cos = torch.where(in_window, 1 - BETA * r2 / (2 * SIGMA**2), torch.full_like(r2, -1.0))
    sin = (1 - cos**2).clamp_min(0).sqrt()
    trg = (cos[None] * d[:, None, None] + sin[None] * u[:, None, None]).float()
    src = d[:, None, None].expand(c, h, w).contiguous()  # every source cell is d
    src_kps = torch.tensor([[50.0, 50.0]])
    trg_kps = torch.tensor([[gx * 10.0, gy * (img - 1) / (h - 1)]])
    got = pair_loss(src, trg, src_kps, trg_kps, img).item()
    assert got == pytest.approx(_gibbs_minimum(), rel=1e-4)
    # any perturbation of the map can only raise it
    gen = torch.Generator().manual_seed(13)
    for _ in range(3):
        noisy = trg + 0.05 * torch.randn(trg.shape, generator=gen)
        assert pair_loss(src, noisy, src_kps, trg_kps, img).item() > got


# --------------------------------------------------------------------------------------------------------------
# degenerate inputs, dtypes, batches
# --------------------------------------------------------------------------------------------------------------


def test_no_keypoints_returns_a_backward_safe_zero():
    src = torch.randn(4, 6, 6, requires_grad=True)
    trg = torch.randn(4, 6, 6, requires_grad=True)
    loss = pair_loss(src, trg, torch.zeros(0, 2), torch.zeros(0, 2), 64)
    assert loss.dtype == torch.float32 and loss.item() == 0.0
    loss.backward()
    assert src.grad is not None and (src.grad == 0).all()


def test_all_masked_keypoints_return_a_backward_safe_zero():
    src = torch.randn(4, 6, 6, requires_grad=True)
    trg = torch.randn(4, 6, 6, requires_grad=True)
    # far outside, and exactly on the border corner with a 1×1 window (its only point is on the border)
    far = pair_loss(src, trg, torch.tensor([[10.0, 10.0]]), torch.tensor([[-500.0, 30.0]]), 64)
    corner = pair_loss(src, trg, torch.tensor([[10.0, 10.0]]), torch.tensor([[63.0, 0.0]]), 64, window=1)
    for loss in (far, corner):
        assert loss.dtype == torch.float32 and loss.item() == 0.0
        loss.backward()
    assert torch.isfinite(src.grad).all() and (src.grad == 0).all()
    assert torch.isfinite(trg.grad).all() and (trg.grad == 0).all()


def test_bf16_features_give_a_float32_loss_close_to_fp32():
    src, trg, src_kps, trg_kps, img_size = _random_case(9, 8, 12, 12, 111)
    fp32 = pair_loss(src, trg, src_kps, trg_kps, img_size)
    src16, trg16 = src.bfloat16(), trg.bfloat16()
    bf16 = pair_loss(src16, trg16, src_kps, trg_kps, img_size)
    assert bf16.dtype == torch.float32
    # computed in float32 from the bf16 values ...
    upcast = pair_loss(src16.float(), trg16.float(), src_kps, trg_kps, img_size)
    assert bf16.item() == pytest.approx(upcast.item(), rel=1e-6)
    # ... and close to the full-precision loss
    assert bf16.item() == pytest.approx(fp32.item(), rel=3e-2)
    mixed = pair_loss(src16, trg, src_kps, trg_kps, img_size)
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(fp32.item(), rel=3e-2)
    leaf = src16.clone().requires_grad_(True)
    pair_loss(leaf, trg16, src_kps, trg_kps, img_size).backward()
    assert leaf.grad.dtype == torch.bfloat16 and torch.isfinite(leaf.grad.float()).all()


def test_batch_loss_is_the_mean_of_pair_losses():
    cases = [_random_case(10 + i, 8, 10, 14, 118) for i in range(3)]
    src = torch.stack([c[0] for c in cases])
    trg = torch.stack([c[1] for c in cases])
    skps = [c[2] for c in cases]
    tkps = [c[3][: 4 + 3 * i] for i, c in enumerate(cases)]  # different keypoint counts
    skps = [s[: len(t)] for s, t in zip(skps, tkps)]
    pairs = [pair_loss(src[i], trg[i], skps[i], tkps[i], 118) for i in range(3)]
    got = batch_loss(src, trg, skps, tkps, 118)
    assert got.item() == pytest.approx(sum(p.item() for p in pairs) / 3, rel=1e-6)
    # keyword arguments reach pair_loss
    got_kw = batch_loss(list(src), list(trg), skps, tkps, 118, beta=0.1, window=5)
    pairs_kw = [pair_loss(src[i], trg[i], skps[i], tkps[i], 118, beta=0.1, window=5).item() for i in range(3)]
    assert got_kw.item() == pytest.approx(sum(pairs_kw) / 3, rel=1e-6)
    with pytest.raises(TypeError):
        batch_loss(src, trg, skps, tkps, 118, temperature=0.1)


def test_batch_loss_leaves_out_pairs_without_valid_keypoints():
    cases = [_random_case(20 + i, 8, 12, 12, 111) for i in range(2)]
    src = torch.stack([cases[0][0], cases[1][0], cases[0][0]]).requires_grad_(True)
    trg = torch.stack([cases[0][1], cases[1][1], cases[1][1]]).requires_grad_(True)
    skps = [cases[0][2], torch.zeros(0, 2), torch.tensor([[5.0, 5.0]])]
    tkps = [cases[0][3], torch.zeros(0, 2), torch.tensor([[-900.0, 5.0]])]
    got = batch_loss(src, trg, skps, tkps, 111)
    assert got.item() == pytest.approx(pair_loss(src[0], trg[0], skps[0], tkps[0], 111).item(), rel=1e-6)
    got.backward()
    assert torch.isfinite(src.grad).all() and src.grad[0].abs().sum() > 0 and (src.grad[1:] == 0).all()
    # nothing valid at all: a graph-connected zero
    empty = batch_loss(src[1:], trg[1:], skps[1:], tkps[1:], 111)
    assert empty.dtype == torch.float32 and empty.item() == 0.0
    empty.backward()


def test_pair_loss_rejects_bad_inputs():
    src, trg = torch.randn(4, 6, 6), torch.randn(4, 6, 6)
    kps = torch.tensor([[10.0, 10.0]])
    with pytest.raises(ValueError):
        pair_loss(src, torch.randn(5, 6, 6), kps, kps, 64)  # channel mismatch
    with pytest.raises(ValueError):
        pair_loss(src, trg, kps, torch.zeros(2, 2), 64)  # keypoint count mismatch
    with pytest.raises(ValueError):
        pair_loss(src, trg, kps[0], kps, 64)  # not (N, 2)
    with pytest.raises(ValueError):
        pair_loss(src[None], trg, kps, kps, 64)  # not (C, h, w)
    with pytest.raises(ValueError):
        pair_loss(src, trg, kps, kps, 64, beta=0.0)
    with pytest.raises(ValueError):
        pair_loss(src, trg, kps, kps, 64, window=6)


# --------------------------------------------------------------------------------------------------------------
# batched form: (B, C, h, w) maps, padded (B, N, 2) keypoints and a (B, N) mask
# --------------------------------------------------------------------------------------------------------------


def _ragged_batch(counts, c=6, h=10, w=14, img=118, seed=60):
    """Pairs with ``counts`` keypoints each (border and outside cases first), as lists and as a padded batch."""
    cases = [_random_case(seed + i, c, h, w, img) for i in range(len(counts))]
    src = torch.stack([cs[0] for cs in cases])
    trg = torch.stack([cs[1] for cs in cases])
    skps = [cs[2][-n:] if n else cs[2][:0] for cs, n in zip(cases, counts)]
    tkps = [cs[3][-n:] if n else cs[3][:0] for cs, n in zip(cases, counts)]
    n_max = max(counts)
    pad_s = torch.full((len(counts), n_max, 2), float("nan"))  # padding content must not leak into the loss
    pad_t = torch.full((len(counts), n_max, 2), float("nan"))
    mask = torch.zeros(len(counts), n_max, dtype=torch.bool)
    for i, n in enumerate(counts):
        pad_s[i, :n], pad_t[i, :n], mask[i, :n] = skps[i], tkps[i], True
    return src, trg, skps, tkps, pad_s, pad_t, mask, img


def test_pair_loss_batched_matches_brute_force_per_pair():
    src, trg, skps, tkps, pad_s, pad_t, mask, img = _ragged_batch([9, 4, 7])
    got = pair_loss(src, trg, pad_s, pad_t, img, mask=mask)
    assert got.shape == (3,) and got.dtype == torch.float32
    for i in range(3):
        expected, _, _ = reference_pair_loss(src[i], trg[i], skps[i], tkps[i], img)
        assert got[i].item() == pytest.approx(expected, rel=1e-5, abs=1e-6), i


def test_batch_loss_padded_tensor_equals_sequence_form():
    src, trg, skps, tkps, pad_s, pad_t, mask, img = _ragged_batch([12, 3, 0, 8])
    from_lists = batch_loss(list(src), list(trg), skps, tkps, img)
    from_tensor = batch_loss(src, trg, pad_s, pad_t, img, mask=mask)
    expected = [reference_pair_loss(src[i], trg[i], skps[i], tkps[i], img) for i in range(4)]
    kept = [loss for loss, n_valid, _ in expected if n_valid]
    assert len(kept) == 3
    assert from_lists.item() == pytest.approx(sum(kept) / len(kept), rel=1e-5)
    assert from_tensor.item() == pytest.approx(from_lists.item(), rel=1e-6)


def test_batch_loss_gradients_equal_the_per_pair_loop():
    """One batched backward gives the gradients of the mean of separately computed single-pair losses."""
    src, trg, skps, tkps, pad_s, pad_t, mask, img = _ragged_batch([10, 5, 7], seed=70)
    s_b, t_b = src.clone().requires_grad_(True), trg.clone().requires_grad_(True)
    batch_loss(s_b, t_b, pad_s, pad_t, img, mask=mask).backward()
    s_l, t_l = src.clone().requires_grad_(True), trg.clone().requires_grad_(True)
    losses = [pair_loss(s_l[i], t_l[i], skps[i], tkps[i], img) for i in range(3)]
    (sum(losses) / 3).backward()
    assert torch.isfinite(s_b.grad).all() and torch.isfinite(t_b.grad).all()
    torch.testing.assert_close(s_b.grad, s_l.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(t_b.grad, t_l.grad, atol=1e-6, rtol=1e-5)


def test_batch_loss_gradient_matches_finite_differences_of_the_brute_force():
    """Directional derivative of the float64 brute-force loss vs the batched loss's autograd gradient."""
    src, trg, skps, tkps, pad_s, pad_t, mask, img = _ragged_batch([5, 3], c=4, h=8, w=8, img=71, seed=80)
    gen = torch.Generator().manual_seed(81)
    d_src, d_trg = torch.randn(src.shape, generator=gen), torch.randn(trg.shape, generator=gen)
    s, t = src.clone().requires_grad_(True), trg.clone().requires_grad_(True)
    batch_loss(s, t, pad_s, pad_t, img, mask=mask).backward()
    analytic = float((s.grad * d_src).sum() + (t.grad * d_trg).sum())

    def reference(eps):
        s64, t64 = src.double() + eps * d_src.double(), trg.double() + eps * d_trg.double()
        vals = [reference_pair_loss(s64[i], t64[i], skps[i], tkps[i], img)[0] for i in range(2)]
        return sum(vals) / 2

    eps = 1e-5
    numeric = (reference(eps) - reference(-eps)) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-5)


def test_batch_loss_maps_of_different_sizes():
    a = _random_case(90, 6, 12, 12, 111)
    b = _random_case(91, 6, 10, 14, 118)  # other grid and pixel scale: same img_size needed, so rescale b's kps
    skps_b, tkps_b = b[2] * 110 / 117, b[3] * 110 / 117
    got = batch_loss([a[0], b[0]], [a[1], b[1]], [a[2], skps_b], [a[3], tkps_b], 111)
    pairs = [pair_loss(a[0], a[1], a[2], a[3], 111), pair_loss(b[0], b[1], skps_b, tkps_b, 111)]
    assert got.item() == pytest.approx(sum(p.item() for p in pairs) / 2, rel=1e-6)


def test_batched_inputs_are_validated():
    src, trg, skps, tkps, pad_s, pad_t, mask, img = _ragged_batch([3, 2])
    with pytest.raises(ValueError, match="mix of batched and unbatched"):
        pair_loss(src, trg[0], pad_s, pad_t, img)
    with pytest.raises(ValueError, match="batch sizes differ"):
        pair_loss(src, trg[:1], pad_s, pad_t, img)
    with pytest.raises(ValueError, match="mask"):
        batch_loss(src, trg, pad_s, pad_t, img, mask=mask[:1])
    with pytest.raises(ValueError, match="mask"):
        batch_loss(src, trg, skps, tkps, img, mask=mask)  # sequences are padded here, no mask
    with pytest.raises(TypeError, match="floating"):
        pair_loss(src.long(), trg, pad_s, pad_t, img)
