"""Markdown table over result files of run.py, and an SVG of loss curves.

  python examples/realrun/summary.py runs/res/*.json [--md OUT.md] [--svg OUT.svg --curves a.json,b.json]
  python examples/realrun/summary.py runs/res/*.json --group   # mean +- sd over seeds of the same cell
  (files may be gzipped: examples/realrun/results/*.json.gz)

The table: codec and options, seeds, ratio per residual (sum raw / sum
container over the residual checkpoints, keyframes excluded), the final
validation gap (restored final checkpoint vs the uninterrupted run, %), the
largest and the first val-loss jump at a restore (% of the in-loop run's own
val loss just before compression), and the mean relative errors.
"""
import argparse
import gzip
import json
import math
import os
import statistics as st


def load(paths):
    out = []
    for p in paths:
        try:
            # results/ keeps them gzipped
            with (gzip.open(p, "rt") if p.endswith(".gz") else open(p)) as f:
                r = json.load(f)
        except (OSError, ValueError):
            continue
        if "summary" not in r:
            continue
        r["_path"] = p
        out.append(r)
    return out


def cell_name(r):
    c = r["config"]
    return "%s/%s lr %g int %d steps %d wu %d %s %s b2 %g %s" % (
        c["family"], c["loop"], c["lr"], c["interval"], c["steps"], c["warmup"], c["schedule"], c["dtype"],
        c["beta2"], c["size"])


def variant_name(r):
    v = r["codec"]
    if r.get("excp_args"):
        v += " " + r["excp_args"]
    if r.get("sim_args"):
        v += " " + r["sim_args"]
    if r.get("first") == "init" and r["codec"] != "none":
        v += " [first: vs init]"
    lo = r.get("lossy") or {}
    if lo and (lo.get("streams") != "w,m,v" or lo.get("kinds") != "all" or lo.get("steps") != "all"):
        v += " [lossy %s/%s/%s]" % (lo["streams"], lo["kinds"], lo["steps"])
    if r.get("tag"):
        v = r["tag"] + ": " + v
    return v


def fmt(x, f="%.2f"):
    return "-" if x is None else f % x


def mean_err(r, k):
    xs = [c["err"][k] for c in r["checkpoints"] if c.get("err") and c["err"].get(k) is not None and not c.get("keyframe")]
    return sum(xs) / len(xs) if xs else None


def table(rows, group):
    lines = []
    by = {}
    for r in rows:
        by.setdefault((cell_name(r), variant_name(r)), []).append(r)
    cells = sorted({k[0] for k in by})
    for cell in cells:
        lines.append("\n**%s**\n" % cell)
        lines.append("| variant | seeds | ratio/residual | final gap % | first jump % | max jump % | dW err | m err | v err | u err |")
        lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        keys = sorted([k for k in by if k[0] == cell], key=lambda k: (k[1] != "none", k[1]))
        for k in keys:
            rs = sorted(by[k], key=lambda r: r["config"]["seed"])
            groups = [rs] if group else [[r] for r in rs]
            for g in groups:
                seeds = ",".join(str(r["config"]["seed"]) for r in g)
                gaps = [r["summary"]["gap_pct"] for r in g]
                gap = "%+.2f" % gaps[0] if len(g) == 1 else "%+.2f ± %.2f (%s)" % (
                    st.mean(gaps), st.stdev(gaps), ", ".join("%+.2f" % x for x in gaps))
                ratio = [r["summary"].get("ratio_residual") for r in g]
                ratio = None if None in ratio else st.mean(ratio)
                fj = [r["summary"].get("first_jump_pct") for r in g]
                mj = [r["summary"].get("max_jump_pct") for r in g]
                avg = lambda xs: None if not xs or None in xs else st.mean(xs)
                errs = [avg([mean_err(r, e) for r in g]) for e in ("dw", "m", "v", "u")]
                lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    k[1], seeds, fmt(ratio, "%.1fx"), gap if k[1] != "none" else "(val %.4f)" % st.mean(
                        r["summary"]["final_val_base"] for r in g),
                    fmt(avg(fj), "%+.2f"), fmt(avg(mj), "%+.2f"), *[fmt(e, "%.2f") for e in errs]))
    return "\n".join(lines)


def smooth(xs, w):
    out = []
    for i in range(0, len(xs), w):
        seg = [x for x in xs[i:i + w] if x is not None]
        out.append((i + len(seg) / 2, sum(seg) / len(seg)) if seg else None)
    return [p for p in out if p]


def svg(rows, path, title=""):
    """Train loss (smoothed) and val loss at checkpoints, baseline and each run."""
    W, H, L, R, T, B = 900, 520, 60, 260, 30, 40
    series = []
    base = rows[0]
    colors = ["#000000", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"]
    series.append(("baseline (train)", smooth(base["base_train_curve"], 20), colors[0], "4,3"))
    vb = [(c["step"], c["val_base"]) for c in base["checkpoints"]]
    series.append(("baseline (val)", vb, colors[0], None))
    for i, r in enumerate(rows):
        col = colors[(i + 1) % len(colors)]
        name = variant_name(r)[:34]
        series.append((name + " (train)", smooth(r["train_curve"], 20), col, "4,3"))
        pts = []
        for c in r["checkpoints"]:
            pts.append((c["step"], c["val"]))
            if "val_restored" in c:
                pts.append((c["step"], c["val_restored"]))
        series.append((name + " (val)", pts, col, None))
    xs = [p[0] for s in series for p in s[1]]
    ys = [p[1] for s in series for p in s[1] if p[0] >= max(xs) * 0.05]
    x0, x1 = 0, max(xs)
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05
    y0 -= pad
    y1 += pad
    X = lambda x: L + (x - x0) / (x1 - x0) * (W - L - R)
    Y = lambda y: T + (1 - (min(max(y, y0), y1) - y0) / (y1 - y0)) * (H - T - B)
    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">' % (W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="18" font-size="13">%s</text>' % (L, title)]
    for j in range(6):
        y = y0 + (y1 - y0) * j / 5
        o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>' % (L, W - R, Y(y), Y(y)))
        o.append('<text x="%d" y="%.1f" text-anchor="end">%.3f</text>' % (L - 4, Y(y) + 4, y))
    for j in range(6):
        x = x0 + (x1 - x0) * j / 5
        o.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (X(x), H - B + 16, x))
    o.append('<text x="%d" y="%d" text-anchor="middle">step</text>' % ((L + W - R) / 2, H - 6))
    o.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>' % (L, T, W - L - R, H - T - B))
    for i, (name, pts, col, dash) in enumerate(series):
        if not pts:
            continue
        d = " ".join("%s%.1f,%.1f" % ("M" if j == 0 else "L", X(x), Y(y)) for j, (x, y) in enumerate(pts))
        o.append('<path d="%s" fill="none" stroke="%s" stroke-width="%s"%s/>' % (
            d, col, "1" if dash else "1.6", ' stroke-dasharray="%s"' % dash if dash else ""))
        ly = T + 14 * i + 8
        o.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s"%s/>' % (
            W - R + 10, W - R + 30, ly, ly, col, ' stroke-dasharray="%s"' % dash if dash else ""))
        o.append('<text x="%d" y="%d">%s</text>' % (W - R + 34, ly + 4, name.replace("&", "&amp;").replace("<", "&lt;")))
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--md", default=None)
    ap.add_argument("--group", action="store_true", help="one row per variant, mean and sd over seeds")
    ap.add_argument("--svg", default=None)
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    rows = load(a.files)
    md = table(rows, a.group)
    print(md)
    if a.md:
        with open(a.md, "w") as f:
            f.write(md + "\n")
    if a.svg:
        svg([r for r in rows if r["codec"] != "none"] or rows, a.svg, a.title)


if __name__ == "__main__":
    main()
