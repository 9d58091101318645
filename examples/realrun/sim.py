"""A Python simulator of excp's chunk codec and of candidate codecs.

For each checkpoint it produces the restored tensors (what excp would
restore) and an estimate of the container size: the empirical entropy of
every symbol stream (with the contexts excp uses), plus codebooks and the
per-chunk and per-tensor side costs, calibrated against the real excp byte
counts on the defaults (FINDINGS.md, "Simulator calibration").

A codec is a dict of options (PRESETS below; `--sim-args '{"keep": 0.4}'`
overrides any of them):

weights (the residual dW = W - W_base, W_base = the restored base):
  w          "topk"  keep the `keep` share of largest |dW| per chunk, k-means
                     with 2^wbits - 1 centers over the kept values (excp today)
             "dz"    dead-zone uniform quantiser, entropy-coded: step
                     delta = wstep * rms(dW) per chunk, zero bin |dW| < wdz * delta,
                     reconstruction at the members' mean per index (|index| <= 8
                     stored as floats; beyond: the bin centre)
             "exact" lossless
  wtarget    if set (with "dz"), the step is chosen per chunk by bisection so
             that ||dW - dW^|| / ||dW|| = wtarget
  first      options merged in for the first residual (e.g. {"w": "exact"})
  warm       options merged in while the LR is still warming up
  kinds      {kind: options} merged in for parameters of that kind
             (embedding, norm, attn, mlp, head)
  ef         error feedback: add the previous checkpoint's weight error
             (W - W^ of the last call) to the next residual

first moment m:
  m          "joint" keep m where |m| > beta * mean|m| and dW was kept (excp)
             "free"  keep m where |m| > beta * mean|m| (any dW)
             "dz"    dead-zone uniform quantiser like dW (mstep, mdz)
             "zero"  drop m entirely
  mbits      k-means bits for "joint"/"free"
  mpred      pruned m is predicted as c * dW^ (c: least squares per chunk, one
             float) instead of 0

second moment v (what is restored where v is not kept):
  v          "joint" keep v where m is kept (log k-means, vbits), fill the rest
             "log"   code log2(v) everywhere with a uniform step of vstep
                     octaves (entropy-coded), optionally against a predictor
                     (vpred), reconstruction at the bin centre
  vfill      "mean" (excp: chunk mean of the pruned v), "q:Q" (quantile Q of
             the pruned v), "rank1" (Adafactor's row x column / total of the
             pruned v, of the 2-D tensor; falls back to mean), "max"
  vpred      for v = "log": "none", "rank1", "base" (the base checkpoint's
             restored v, times vdecay fitted per chunk)
"""
import copy
import math

import numpy as np
import torch

CHUNK = 1 << 20

DEFAULTS = dict(w="topk", keep=0.3, wbits=2, wstep=None, wdz=1.0, wtarget=None,
                m="joint", beta=2.0, mbits=2, mstep=None, mdz=1.0, mpred=False,
                v="joint", vbits=2, vfill="mean", vstep=1.0, vpred="none",
                first=None, warm=None, kinds=None, ef=0.0, vfloor=0.0)

PRESETS = {
    "defaults": {},
    # the recommended design (FINDINGS.md): unbiased (subtractive-dither) uniform
    # quantisation of dW with a v-weighted step, Adam's v restored from a rank-1
    # (row x column) estimate, m kept where large and dW coded nonzero, a finer
    # step for the first residual
    "f1": dict(w="sd", wstep=2.5, wvexp=0.25, wvclip=2, vfill="rank1", vkeep=False, first=dict(wstep=1.0)),
    # f1 with m kept where |m| / sqrt(v^) > 2 mean (Adam's step, not |m|, selects)
    "f2": dict(w="sd", wstep=2.5, wvexp=0.25, wvclip=2, vfill="rank1", vkeep=False, first=dict(wstep=1.0),
               m="u", mtau=2.0),
    # the recommendation: f2 without the v-weighted step (except for the first
    # residual), step 2 rms
    "f3": dict(w="sd", wstep=2.0, vfill="rank1", vkeep=False, m="u", mtau=2.0,
               first=dict(wstep=1.0, wvexp=0.25, wvclip=2)),
    # f3 + the pruned m predicted from the decoded residual: c dW^ sqrt(v^), c by
    # least squares per chunk (one float): the recommendation
    "f4": dict(w="sd", wstep=2.0, vfill="rank1", vkeep=False, m="u", mtau=2.0, mpred="v",
               first=dict(wstep=1.0, wvexp=0.25, wvclip=2)),
    "paper": dict(w="paper", alpha=5e-5, wbits=4, mbits=4, vbits=4, vfill="zero", vlinear=True),
}

# Side costs, bytes (calibrated: FINDINGS.md). Per container, per tensor, per
# chunk, per coded stream (its tables), per codebook center.
OVERHEAD = dict(container=600, tensor=70, chunk=40, stream=6, center=4)


def entropy_bits(sym, ctx=None):
    """Empirical entropy of a symbol stream in bits (given contexts)."""
    sym = np.asarray(sym)
    if sym.size == 0:
        return 0.0
    if ctx is None:
        _, c = np.unique(sym, return_counts=True)
        p = c / c.sum()
        return float(-(c * np.log2(p)).sum())
    key = np.asarray(ctx).astype(np.int64) * 1_000_003 + (sym.astype(np.int64) + 500_000)
    _, jc = np.unique(key, return_counts=True)
    _, cc = np.unique(ctx, return_counts=True)
    return float(-(jc * np.log2(jc)).sum() + (cc * np.log2(cc)).sum())


def n_models(sym, ctx=None):
    if np.asarray(sym).size == 0:
        return 0
    return 1 if ctx is None else len(np.unique(ctx))


def kmeans1d(x, k, log=False, iters=40):
    """Centers of 1-D k-means over nonzero values x (quantile init, like excp)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return np.zeros(0)
    y = np.log(x) if log else x
    ys = np.sort(y)
    u = np.unique(ys)
    if u.size <= k:
        return np.exp(u) if log else u
    n = ys.size
    cs = np.concatenate([[0.0], np.cumsum(ys)])
    c = ys[np.minimum(n - 1, ((np.arange(k) + 0.5) / k * n).astype(np.int64))]
    c = np.unique(c)
    for _ in range(iters):
        b = (c[1:] + c[:-1]) / 2
        edges = np.concatenate([[0], np.searchsorted(ys, b, side="right"), [n]])
        cnt = np.diff(edges)
        s = cs[edges[1:]] - cs[edges[:-1]]
        new = np.where(cnt > 0, s / np.maximum(cnt, 1), c)
        if np.allclose(new, c, rtol=0, atol=1e-12 * (abs(c).max() + 1e-30)):
            c = new
            break
        c = new
    c = c[np.diff(np.concatenate([[0], np.searchsorted(ys, (c[1:] + c[:-1]) / 2, side="right"), [n]])) > 0]
    return np.exp(c) if log else c


def assign(x, centers, log=False):
    """1-based symbols of x against ascending centers (midpoints / geometric)."""
    if centers.size == 0:
        return np.zeros(x.size, np.int64)
    if log:
        b = np.sqrt(centers[1:] * centers[:-1])
    else:
        b = (centers[1:] + centers[:-1]) / 2
    return np.searchsorted(b, x, side="left") + 1


def quantize_kmeans(vals, bits, log=False, refine=True):
    """(reconstruction, symbols 1..K, centers) of nonzero values."""
    c = kmeans1d(vals, (1 << bits) - 1, log=log)
    s = assign(vals, c, log)
    if refine and not log and c.size:
        cnt = np.bincount(s - 1, minlength=c.size)
        sm = np.bincount(s - 1, weights=vals, minlength=c.size)
        c = np.where(cnt > 0, sm / np.maximum(cnt, 1), c)
    c = c.astype(np.float32)
    return c[s - 1] if c.size else np.zeros(0, np.float32), s, c


def deadzone(x, delta, dz=1.0, nstore=8):
    """Dead-zone uniform quantiser: zero for |x| < dz * delta, else index
    sign * (1 + floor((|x| - dz * delta) / delta)), reconstruction at the
    members' mean for |index| <= nstore (stored), else the bin centre.
    Returns (reconstruction, integer indices, number of stored floats)."""
    a = np.abs(x)
    t = dz * delta
    q = np.where(a < t, 0, 1 + np.floor((a - t) / delta)).astype(np.int64)
    idx = np.sign(x).astype(np.int64) * q
    rec = np.where(q > 0, np.sign(x) * (t + (q - 0.5) * delta), 0.0)
    stored = 0
    for j in np.unique(idx):
        if j == 0 or abs(j) > nstore:
            continue
        sel = idx == j
        rec[sel] = x[sel].mean()
        stored += 1
    return rec.astype(np.float32), idx, stored


def rank1(v2d):
    """Adafactor's factored estimate of a positive matrix: r c^T / sum."""
    r = v2d.sum(axis=1, keepdims=True)
    c = v2d.sum(axis=0, keepdims=True)
    s = v2d.sum()
    return (r @ c) / s if s > 0 else np.zeros_like(v2d)


class Sim:
    """A candidate codec in the loop (same interface as loopcodecs.Excp.file)."""

    def __init__(self, name, args):
        self.name = "sim:" + name
        p = dict(DEFAULTS)
        p.update(PRESETS.get(name, {}))
        p.update(args)
        self.p = p
        self.err = {}  # error feedback state
        self.calls = 0
        self.stats = None

    def options(self, name, kind, first, warm):
        p = dict(self.p)
        if first and p.get("first"):
            p.update(p["first"])
        if warm and p.get("warm"):
            p.update(p["warm"])
        if p.get("kinds") and kind in p["kinds"]:
            p.update(p["kinds"][kind])
        return p

    def set_context(self, **kw):
        self.ctx = kw

    def file(self, ck, base, step, work):
        import common as C
        if self.calls == 0:
            self._kf = base is None
        # the first residual: against the initialisation (and, with
        # "first_after_keyframe", the one after a keyframe: runs before 21:45 did that)
        first = base is not None and (self.calls == 0 or (self.calls == 1 and self._kf and self.p.get("first_after_keyframe")))
        warm = bool(getattr(self, "ctx", {}).get("warm"))
        self.calls += 1
        out = {}
        tot = dict(w=0.0, m=0.0, v=0.0, side=0.0)
        raw = 0
        nt = 0
        for n, d in ck.items():
            kind = C.param_kind(n)
            p = self.options(n, kind, first, warm)
            raw += sum(t.numel() * t.element_size() for t in d.values()) + 3 * 100
            nt += 1
            res, bits = self.code_tensor(n, d, base[n] if base is not None else None, p)
            out[n] = res
            for k2 in tot:
                tot[k2] += bits.get(k2, 0.0)
        side = OVERHEAD["container"] + OVERHEAD["tensor"] * nt
        total_bits = tot["w"] + tot["m"] + tot["v"] + tot["side"] + 8 * side
        nparam = sum(d["w"].numel() for d in ck.values())
        info = {"raw_bytes": raw, "bytes": int(math.ceil(total_bits / 8)),
                "bits_per_param": {k2: tot[k2] / nparam for k2 in tot}}
        return out, info

    # ------------------------------------------------------------ one tensor

    def code_tensor(self, name, d, b, p):
        shape = d["w"].shape
        dt = d["w"].dtype
        w = d["w"].float().numpy().ravel().astype(np.float32)
        has_m = "m" in d
        bits = dict(w=0.0, m=0.0, v=0.0, side=0.0)
        if not has_m:
            return {"w": d["w"].clone()}, {"w": 32 * w.size}
        mdt = d["m"].dtype
        m = d["m"].float().numpy().ravel().astype(np.float32)
        v = d["v"].float().numpy().ravel().astype(np.float32)
        wb = b["w"].float().numpy().ravel().astype(np.float32) if b is not None else None
        vb = b["v"].float().numpy().ravel().astype(np.float32) if b is not None else None
        if wb is not None and p["ef"] and name in self.err:
            target = w + np.float32(p["ef"]) * self.err[name]
        else:
            target = w
        if wb is not None and p.get("mflush"):
            # fold the momentum's future effect into the weights: the steps the
            # old m would still have made, lr * sum_s beta1^s * m^ / (sqrt(v^) + eps)
            cx = self.ctx
            t = cx["step"]
            mh = m.astype(np.float64) / (1 - cx["beta1"] ** t)
            vh = v.astype(np.float64) / (1 - cx["beta2"] ** t)
            fl = p["mflush"] * cx["lr"] * cx["beta1"] / (1 - cx["beta1"]) * mh / (np.sqrt(vh) + cx["eps"])
            target = (target - fl).astype(np.float32)
        rw = np.empty_like(w)
        rm = np.empty_like(m)
        rv = np.empty_like(v)
        cols = shape[-1] if len(shape) >= 2 else None
        for s0 in range(0, w.size, CHUNK):
            sl = slice(s0, min(w.size, s0 + CHUNK))
            cw, cm, cv, cb = self.code_chunk(target[sl], wb[sl] if wb is not None else None, m[sl], v[sl],
                                             vb[sl] if vb is not None else None, p, cols if s0 % (cols or 1) == 0 else None,
                                             w_dtype=dt)
            rw[sl], rm[sl], rv[sl] = cw, cm, cv
            for k2 in bits:
                bits[k2] += cb.get(k2, 0.0)
        if wb is not None and p["ef"]:
            self.err[name] = (target - rw).astype(np.float32)
        to = lambda a, dtype: torch.from_numpy(a).reshape(shape).to(dtype)
        return {"w": to(rw, dt), "m": to(rm, mdt), "v": to(rv, mdt)}, bits

    def code_chunk(self, w, wb, m, v, vb, p, cols, w_dtype):
        n = w.size
        side = 8 * OVERHEAD["chunk"]
        bits = {}
        # ---- weights
        if wb is None or p["w"] == "exact":
            rw = w.copy()
            bits["w"] = n * (32 / 1.22 if w_dtype == torch.float32 else 16 / 1.6)
            kept = np.ones(n, bool)
            wsym = None
            dw_hat = None
        else:
            dw = (w - wb).astype(np.float32)
            scale = None
            if p.get("wvexp"):
                # per-element step ~ (v^ / mean v^)^-wvexp, v^ the rank-1 estimate the decoder has
                if cols and n % cols == 0 and n // cols > 1:
                    vh = rank1(v.astype(np.float64).reshape(-1, cols)).ravel()
                else:
                    vh = np.full(n, float(v.astype(np.float64).mean()))
                mv = vh.mean()
                scale = (np.maximum(vh, 1e-30) / mv) ** p["wvexp"] if mv > 0 else np.ones(n)
                if p.get("wvclip"):
                    scale = np.clip(scale, 1 / p["wvclip"], p["wvclip"])
            if scale is not None:
                dw_hat, wsym, wb_bits, wside = self.code_dw((dw * scale).astype(np.float32), v, p)
                dw_hat = (dw_hat / scale).astype(np.float32)
            else:
                dw_hat, wsym, wb_bits, wside = self.code_dw(dw, v, p)
            bits["w"] = wb_bits
            side += wside
            rw = (wb + dw_hat).astype(np.float32)
            if w_dtype != torch.float32:
                rw = torch.from_numpy(rw).to(w_dtype).float().numpy()
            kept = wsym != 0
        # ---- m coded as Adam's step u = m / sqrt(v^): v first
        if p["m"] == "udz":
            vmask = np.zeros(n, bool) if p["v"] == "joint" else None
            rv, vbits, vside = self.code_v(v, vmask, vb, p, cols)
            sv = np.sqrt(rv.astype(np.float64)) + 1e-8
            rec, idx, stored = deadzone((m / sv).astype(np.float64), p["mstep"], p["mdz"])
            rm = (rec * sv).astype(np.float32)
            ctx = None if wsym is None else np.minimum(wsym, 7)
            bits["m"] = entropy_bits(idx, ctx)
            bits["v"] = vbits
            side += vside + 8 * (OVERHEAD["stream"] * n_models(idx, ctx) + OVERHEAD["center"] * stored)
            bits["side"] = side
            return rw, rm, rv, bits
        # ---- m selected and coded as Adam's step u = m / sqrt(v^) (v^: the rank-1 estimate)
        if p["m"] == "u":
            rv, vbits, vside = self.code_v(v, np.zeros(n, bool), vb, p, cols)
            sv = np.sqrt(rv.astype(np.float64)) + 1e-12
            u = m / sv
            au = np.abs(u)
            tau = p["mtau"] * au.mean()
            mk = au > tau
            if wsym is not None and p.get("mjoint", True):
                mk &= kept
            rm = np.zeros(n, np.float32)
            sym = np.zeros(n, np.int64)
            if mk.any():
                rec, s_, c = quantize_kmeans(u[mk], p["mbits"])
                rm[mk] = (rec * sv[mk]).astype(np.float32)
                sym[mk] = s_
                side += 8 * OVERHEAD["center"] * c.size
            if p["mpred"] and dw_hat is not None:
                # pruned m predicted as c * dW^ * sqrt(v^), c by least squares per chunk
                pr = ~mk
                x = dw_hat[pr].astype(np.float64) * sv[pr]
                den = (x * x).sum()
                c = (x * m[pr]).sum() / den if den > 0 else 0.0
                rm[pr] = (c * x).astype(np.float32)
                side += 32
            if wsym is not None and p.get("mjoint", True):
                bits["m"] = entropy_bits(sym[kept], np.minimum(wsym[kept], 7))
                side += 8 * OVERHEAD["stream"] * n_models(sym[kept], np.minimum(wsym[kept], 7))
            else:
                bits["m"] = entropy_bits(sym)
                side += 8 * OVERHEAD["stream"]
            bits["v"] = vbits
            side += vside
            bits["side"] = side
            return rw, rm, rv, bits
        # ---- m
        mode = p["m"]
        absm = np.abs(m)
        ro = p["beta"] * absm.mean() if n else 0.0
        if mode == "zero":
            mk = np.zeros(n, bool)
        elif mode == "joint" and wsym is not None:
            mk = (absm > ro) & kept
        else:
            mk = absm > ro
        rm = np.zeros(n, np.float32)
        if mode in ("joint", "free") and mk.any():
            rec, s, c = quantize_kmeans(m[mk], p["mbits"])
            rm[mk] = rec
            # excp: m coded over the dW-kept positions with the dW symbol as context;
            # a "free" m also needs its mask over the other positions.
            if mode == "joint" and wsym is not None:
                sym = np.zeros(n, np.int64)
                sym[mk] = s
                bits["m"] = entropy_bits(sym[kept], wsym[kept])
                side += 8 * (OVERHEAD["stream"] * n_models(sym[kept], wsym[kept]) + OVERHEAD["center"] * c.size)
            else:
                sym = np.zeros(n, np.int64)
                sym[mk] = s
                ctx = wsym if wsym is not None else None
                bits["m"] = entropy_bits(sym, ctx)
                side += 8 * (OVERHEAD["stream"] * n_models(sym, ctx) + OVERHEAD["center"] * c.size)
        elif mode == "dz":
            rms = float(np.sqrt((m.astype(np.float64) ** 2).mean())) or 1.0
            rec, idx, stored = deadzone(m, p["mstep"] * rms, p["mdz"])
            rm = rec
            mk = idx != 0
            ctx = None if wsym is None else np.minimum(np.abs(wsym), 3)
            bits["m"] = entropy_bits(idx, ctx)
            side += 8 * (OVERHEAD["stream"] * n_models(idx, ctx) + OVERHEAD["center"] * stored)
        # ---- v
        vmask = mk if mode != "dz" else (mk & (np.abs(m) > ro))
        if p.get("vkeep") is False:
            vmask = np.zeros(n, bool)  # no v values coded: the fill (rank-1) everywhere
        rv, vbits, vside = self.code_v(v, vmask, vb, p, cols)
        bits["v"] = vbits
        side += vside
        if p["mpred"] and dw_hat is not None:
            # pruned m predicted from the decoded residual: c * dW^ (mpred true) or
            # c * dW^ * sqrt(v^) (mpred "v"); c by least squares per chunk, one float
            pr = ~mk
            x = dw_hat[pr].astype(np.float64)
            if p["mpred"] == "v":
                x = x * np.sqrt(rv[pr].astype(np.float64))
            den = (x * x).sum()
            c = (x * m[pr]).sum() / den if den > 0 else 0.0
            rm[pr] = (c * x * p.get("mpredgain", 1.0)).astype(np.float32)
            side += 32
        bits["side"] = side
        return rw, rm, rv, bits

    def code_dw(self, dw, v, p):
        """(dW^, symbols for contexts (0 = zero), bits, side bits)."""
        n = dw.size
        mode = p["w"]
        if mode == "topk":
            a = np.abs(dw)
            k = min(n - 1, max(0, int(math.floor((1 - p["keep"]) * n))))
            thr = np.partition(a, k)[k] if p["keep"] < 1 else 0.0
            kept = (a > thr) & (dw != 0)
            out = np.zeros(n, np.float32)
            sym = np.zeros(n, np.int64)
            if kept.any():
                rec, s, c = quantize_kmeans(dw[kept], p["wbits"])
                out[kept] = rec
                sym[kept] = s
                side = 8 * (OVERHEAD["stream"] + OVERHEAD["center"] * c.size)
            else:
                side = 8 * OVERHEAD["stream"]
            return out, sym, entropy_bits(sym), side
        if mode == "paper":
            a = np.abs(dw)
            mv = float(np.abs(v).mean())
            fac = min(2.5, p["alpha"] / math.sqrt(mv)) if mv > 0 else 2.5
            thr = np.sort(a)[(n - 1) >> 1] * fac
            kept = a > thr
            out = np.zeros(n, np.float32)
            sym = np.zeros(n, np.int64)
            rec, s, c = quantize_kmeans(dw[kept], p["wbits"])
            out[kept] = rec
            sym[kept] = s
            return out, sym, entropy_bits(sym), 8 * (OVERHEAD["stream"] + 2 * c.size)
        if mode == "dz":
            rms = float(np.sqrt((dw.astype(np.float64) ** 2).mean()))
            if rms == 0:
                return np.zeros(n, np.float32), np.zeros(n, np.int64), 0.0, 8 * OVERHEAD["stream"]
            if p["wtarget"]:
                lo, hi = 0.01, 20.0
                for _ in range(30):
                    mid = math.sqrt(lo * hi)
                    rec, idx, st = deadzone(dw, mid * rms, p["wdz"])
                    e = np.sqrt(((dw - rec).astype(np.float64) ** 2).mean()) / rms
                    if e > p["wtarget"]:
                        hi = mid
                    else:
                        lo = mid
                step = lo
            else:
                step = p["wstep"]
            rec, idx, st = deadzone(dw, step * rms, p["wdz"])
            sym = np.sign(idx) * np.minimum(np.abs(idx), 3)  # context for m: sign and size class
            sym = np.where(idx != 0, np.abs(sym) + (idx < 0) * 3, 0)
            return rec, sym, entropy_bits(idx), 8 * (OVERHEAD["stream"] + OVERHEAD["center"] * st + 4)
        if mode == "sd":
            # subtractive dither: q = delta * round(dW / delta + u) - u * delta, u uniform in
            # [-1/2, 1/2) from a deterministic generator: error uniform, independent of dW
            rms = float(np.sqrt((dw.astype(np.float64) ** 2).mean()))
            if rms == 0:
                return np.zeros(n, np.float32), np.zeros(n, np.int64), 0.0, 8 * OVERHEAD["stream"]
            delta = p["wstep"] * rms
            self._chunk_seq = getattr(self, "_chunk_seq", 0) + 1
            u = np.random.default_rng([54321, self.calls, self._chunk_seq]).random(n) - 0.5
            idx = np.round(dw / delta + u).astype(np.int64)
            rec = ((idx - u) * delta).astype(np.float32)
            sym = np.where(idx != 0, np.minimum(np.abs(idx), 3) + (idx < 0) * 3, 0)
            return rec, sym, entropy_bits(idx), 8 * (OVERHEAD["stream"] + 4)
        if mode == "sr":
            # unbiased: stochastic rounding to a uniform grid of step wstep * rms,
            # with a deterministic per-position dither (E[dW^] = dW)
            rms = float(np.sqrt((dw.astype(np.float64) ** 2).mean()))
            if rms == 0:
                return np.zeros(n, np.float32), np.zeros(n, np.int64), 0.0, 8 * OVERHEAD["stream"]
            delta = p["wstep"] * rms
            # a deterministic dither, new at every checkpoint (the TS codec would
            # seed it from the base fingerprint and the chunk index)
            self._chunk_seq = getattr(self, "_chunk_seq", 0) + 1
            u = np.random.default_rng([12345, self.calls, self._chunk_seq]).random(n)
            q = np.floor(np.abs(dw) / delta + u).astype(np.int64)
            idx = np.sign(dw).astype(np.int64) * q
            rec = (idx * delta).astype(np.float32)
            sym = np.where(idx != 0, np.minimum(np.abs(idx), 3) + (idx < 0) * 3, 0)
            return rec, sym, entropy_bits(idx), 8 * (OVERHEAD["stream"] + 4)
        raise ValueError(mode)

    def code_v(self, v, mk, vb, p, cols):
        n = v.size
        rv = np.zeros(n, np.float32)
        if p["v"] == "joint":
            side = 0.0
            bits = 0.0
            if mk.any():
                rec, s, c = quantize_kmeans(v[mk], p["vbits"], log=not p.get("vlinear"), refine=bool(p.get("vlinear")))
                rv[mk] = rec
                bits = entropy_bits(s)
                side = 8 * (OVERHEAD["stream"] + OVERHEAD["center"] * c.size)
            pr = ~mk
            if pr.any():
                rv[pr] = self.fill(v, pr, p["vfill"], cols)
                side += 32
                if p["vfill"] == "rank1" and cols and n % cols == 0:
                    side += 8 * (n // cols + cols)  # row and column sums, 8-bit log each
            return rv, bits, side
        if p["v"] == "log":
            # log2 v coded everywhere, uniform step (octaves), against a predictor
            tiny = 1e-30
            lv = np.log2(np.maximum(v.astype(np.float64), tiny))
            pred = np.zeros(n)
            side = 8 * OVERHEAD["stream"]
            if p["vpred"] == "rank1" and cols and n % cols == 0 and n // cols > 1:
                pred = np.log2(np.maximum(rank1(v.astype(np.float64).reshape(-1, cols)).ravel(), tiny))
                side += 8 * (n // cols + cols)  # row and column factors, 8-bit log each
            elif p["vpred"] == "base" and vb is not None:
                lb = np.log2(np.maximum(vb.astype(np.float64), tiny))
                dlt = lv - lb
                off = float(np.median(dlt))
                pred = lb + off
                side += 32
            else:
                off = float(np.median(lv))
                pred = np.full(n, off)
                side += 32
            r = lv - pred
            q = np.round(r / p["vstep"]).astype(np.int64)
            rec = pred + q * p["vstep"] + p.get("vbias", 0.0) * p["vstep"]
            rv = np.where(v > 0, np.exp2(rec), 0.0).astype(np.float32)
            return rv, entropy_bits(q), side
        raise ValueError(p["v"])

    def fill(self, v, pr, how, cols):
        vp = v[pr].astype(np.float64)
        if how == "zero":
            return 0.0
        if how == "mean":
            return np.float32(vp.mean())
        if how == "max":
            return np.float32(vp.max())
        if how.startswith("q:"):
            return np.float32(np.quantile(vp, float(how[2:])))
        if how == "rank1":
            n = v.size
            if cols and n % cols == 0 and n // cols > 1:
                est = rank1(v.astype(np.float64).reshape(-1, cols)).ravel()
                return est[pr].astype(np.float32)
            return np.float32(vp.mean())
        raise ValueError(how)


def make(name, args):
    return Sim(name, copy.deepcopy(args))
