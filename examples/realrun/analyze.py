"""Offline rate and distortion of codecs on dumped checkpoint pairs (run.py
--dump DIR): no training, so many variants are cheap to compare.

  python examples/realrun/analyze.py runs/dump/gpt-s1 --steps 100,500,1000 \
      --variant defaults --variant 'dz:{"w":"dz","wstep":0.5}' [--excp]

Prints, per step and variant: bits per parameter (w, m, v, side, total),
the ratio, and the relative errors of dW, m, v and Adam's step m/sqrt(v).
--excp also runs the real excp CLI (defaults or --excp-args) on the same
pair, for calibration.
"""
import argparse
import json
import os
import shlex
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402
import loopcodecs as K  # noqa: E402
import sim as S  # noqa: E402
from run import errors  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dump")
    ap.add_argument("--steps", default=None)
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--excp", action="store_true")
    ap.add_argument("--excp-args", default="")
    ap.add_argument("--json", default=None)
    ap.add_argument("--val", default=None, help="FAMILY:SIZE:SEQ, e.g. gpt:small:64: also the val loss of the restored weights")
    a = ap.parse_args()
    steps = [int(s) for s in a.steps.split(",")] if a.steps else sorted(
        int(f[5:-12]) for f in os.listdir(a.dump) if f.startswith("step-"))
    rows = []
    model = None
    if a.val:
        from run import SIZES
        fam, size, seq = a.val.split(":")
        d, layers, heads = SIZES[size]
        model = C.build_model(fam, d, layers, heads, int(seq), 0)
        vx, vy = C.val_windows(256, int(seq))

    def vloss(ck):
        import torch
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(ck[n]["w"])
        return C.val_loss(model, vx, vy)

    for k in steps:
        ck = C.load_ck(os.path.join(a.dump, "step-%d.safetensors" % k))
        bp = os.path.join(a.dump, "base-%d.safetensors" % k)
        base = C.load_ck(bp) if os.path.exists(bp) else None
        nparam = sum(d["w"].numel() for d in ck.values())
        v0 = vloss(ck) if model is not None else None
        variants = []
        for v in a.variant or ["defaults"]:
            name, _, js = v.partition(":")
            args = json.loads(js) if js else {}
            variants.append((v, S.Sim(args.pop("preset", "defaults") if "preset" in args else name if name in S.PRESETS else "defaults", args)))
        if a.excp:
            variants.append(("excp " + a.excp_args, K.Excp(C.excp_command(), shlex.split(a.excp_args))))
        for label, codec in variants:
            if isinstance(codec, S.Sim):
                codec.calls = 1
                codec._kf = False
            with tempfile.TemporaryDirectory() as work:
                rest, info = codec.file(ck, base, k, work)
            e = errors(ck, rest, base)
            row = {"step": k, "variant": label, "ratio": info["raw_bytes"] / info["bytes"],
                   "bpp": 8 * info["bytes"] / nparam, "err": e}
            if model is not None:
                row["val"], row["val_orig"] = vloss(rest), v0
                row["jump_pct"] = 100 * (row["val"] / v0 - 1)
            if "bits_per_param" in info:
                row["bits"] = info["bits_per_param"]
            rows.append(row)
            bits = row.get("bits", {})
            print("%5d %-50s %6.1fx %5.2f bpp  w %.2f m %.2f v %.2f side %.2f | dW %.3f m %.3f v %.3f u %.3f vlog %.2f under %.3f over %.3f" % (
                k, label[:50], row["ratio"], row["bpp"], bits.get("w", 0), bits.get("m", 0), bits.get("v", 0),
                bits.get("side", 0), e["dw"] or 0, e["m"], e["v"], e["u"], e.get("vlog2", 0), e.get("v_under4", 0), e.get("v_over4", 0))
                + (" | jump %+.2f%%" % row["jump_pct"] if "jump_pct" in row else ""), flush=True)
    if a.json:
        C.write_json(a.json, rows)


if __name__ == "__main__":
    main()
