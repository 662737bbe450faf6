"""An independent reference of SSB sampling for the tests: the sampling written out in NumPy,
loop by loop, from the formulas in the docs (Recasens' kernel formula on the saliency
marginals, corner extrapolation and pinning, the two-segment line maps of a padded batch,
linear interpolation), sharing no code with ssb_det."""
import math

import numpy as np

FLOOR = 1e-3  # uniform share mixed into the marginals (SALIENCY_FLOOR)


def ref_pool(logits, v_rows, v_cols, g):
    """Adaptive average pooling of the top-left v_rows x v_cols of ``logits`` to g x g."""
    out = np.zeros((g, g))
    for a in range(g):
        r0, r1 = (a * v_rows) // g, -((-(a + 1) * v_rows) // g)
        for b in range(g):
            c0, c1 = (b * v_cols) // g, -((-(b + 1) * v_cols) // g)
            out[a, b] = logits[r0:r1, c0:c1].mean()
    return out


def ref_knots(marginal, padding, sigma):
    """Recasens et al.: u(p) = sum_q k(p - q) m(q) x(q) / sum_q k(p - q) m(q) over the
    replicate-padded marginal (padded cells continue the cell positions), then the G + 1
    corners, pinned to 0 and 1."""
    g = len(marginal)
    m = marginal * (1 - FLOOR) + FLOOR / g
    u = np.zeros(g)
    for p in range(g):
        num = den = 0.0
        for t in range(-padding, padding + 1):
            q = p + t
            w = math.exp(-0.5 * (t / sigma) ** 2) * m[min(max(q, 0), g - 1)]
            num += w * (q + 0.5) / g
            den += w
        u[p] = num / den
    if g == 1:
        c = np.array([u[0] - 0.5, u[0] + 0.5])
    else:
        c = np.empty(g + 1)
        c[0] = 1.5 * u[0] - 0.5 * u[1]
        c[g] = 1.5 * u[g - 1] - 0.5 * u[g - 2]
        c[1:g] = (u[:-1] + u[1:]) / 2
    return (c - c[0]) / (c[-1] - c[0])


def ref_phi(knots, t):
    k = len(knots) - 1
    i = min(int(math.floor(t * k)), k - 1)
    return knots[i] + (knots[i + 1] - knots[i]) * (t * k - i)


def ref_phi_inverse(knots, t):
    k = len(knots) - 1
    for i in range(k):
        if knots[i] <= t <= knots[i + 1]:
            return (i + (t - knots[i]) / (knots[i + 1] - knots[i])) / k
    return 1.0


def ref_lines(phi, n_dst, n_src, v_dst, v_src):
    """Source coordinate read by each destination line: the image's lines through ``phi``
    on its own region, the rest spread evenly over the source's padding."""
    out = np.empty(n_dst)
    for j in range(n_dst):
        if j < v_dst:
            pos = phi(min((j + 0.5) / v_dst, 1.0)) * v_src - 0.5
            out[j] = min(max(pos, 0.0), v_src - 1)
        else:
            pos = v_src + (j - v_dst + 0.5) * (n_src - v_src) / max(n_dst - v_dst, 1) - 0.5
            out[j] = max(min(pos, n_src - 1), min(v_src, n_src - 1))
    return out


def ref_resample_axis(x, pos, axis):
    """Linear interpolation of ``x`` along ``axis`` at coordinates ``pos``."""
    x = np.moveaxis(x, axis, -1)
    n = x.shape[-1]
    out = np.empty(x.shape[:-1] + (len(pos),))
    for j, p in enumerate(pos):
        p = min(max(p, 0.0), n - 1)
        left = min(int(math.floor(p)), max(n - 2, 0))
        right = min(left + 1, n - 1)
        f = p - left
        out[..., j] = (1 - f) * x[..., left] + f * x[..., right]
    return np.moveaxis(out, -1, axis)


def ref_lines_of_image(x, weight, ratio, g, padding, sigma, valid):
    """Per image of ``x`` (N, C, H, W): the rows and columns its sampled map reads
    (``ys``, ``xs``) and the rows and columns of the sampled map its restore reads
    (``iy``, ``ix``)."""
    n, c, H, W = x.shape
    h, w = (max(1, int(math.floor(ratio * s + 0.5))) for s in (H, W))
    lines = []
    for i in range(n):
        vy, vx = valid[i]
        vh, vw = (max(1.0, math.floor(v * ratio + 0.5)) for v in (vy, vx))
        logits = np.tensordot(weight, x[i], axes=([0], [0]))
        pooled = ref_pool(logits, int(vy), int(vx), g).ravel()
        sal = np.exp(pooled - pooled.max())
        sal = (sal / sal.sum()).reshape(g, g)
        ky, kx = ref_knots(sal.sum(1), padding, sigma), ref_knots(sal.sum(0), padding, sigma)
        lines.append(dict(
            ys=ref_lines(lambda t: ref_phi(ky, t), h, H, vh, vy),
            xs=ref_lines(lambda t: ref_phi(kx, t), w, W, vw, vx),
            iy=ref_lines(lambda t: ref_phi_inverse(ky, t), H, h, vy, vh),
            ix=ref_lines(lambda t: ref_phi_inverse(kx, t), W, w, vx, vw)))
    return lines


def ref_sample(x, lines):
    return np.stack([ref_resample_axis(ref_resample_axis(xi, li["ys"], 1), li["xs"], 2)
                     for xi, li in zip(x, lines)])


def ref_restore(y, lines):
    return np.stack([ref_resample_axis(ref_resample_axis(yi, li["iy"], 1), li["ix"], 2)
                     for yi, li in zip(y, lines)])


def ref_sampler(x, weight, ratio, g, padding, sigma, valid):
    """Sampled map and restored map of each image of ``x`` (N, C, H, W)."""
    lines = ref_lines_of_image(x, weight, ratio, g, padding, sigma, valid)
    sampled = ref_sample(x, lines)
    return sampled, ref_restore(sampled, lines)
