"""A short-horizon probe of codecs on dumped checkpoints (run.py --dump):
restore the checkpoint of step K with a codec, train H more steps from the
restored weights and moments (same data, same schedule as the run), and
compare the val loss with H steps from the original checkpoint. Cheaper
than a whole in-loop run, and it sees what the jump alone does not: how the
restored moments steer the next steps, and how much of the jump recovers.

  python examples/realrun/probe.py runs/dump/gpt-ablw-s1 --step 500 --horizon 60 \
      --variant defaults --variant 'dz:{"w":"dz","wstep":1.0}' [run.py config flags]
"""
import argparse
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402
import run as R  # noqa: E402
import sim as S  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dump")
    ap.add_argument("--step", type=int, action="append")
    ap.add_argument("--horizon", type=int, default=60)
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--exact-moments", action="store_true")
    ap.add_argument("--json", default=None)
    a, rest = ap.parse_known_args()
    cfg = R.parse(rest)
    torch.set_num_threads(1)
    d, layers, heads = R.SIZES[cfg.size]
    model = C.build_model(cfg.family, d, layers, heads, cfg.seq, cfg.seed)
    groups = R.param_groups(model, cfg.wd)
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups], lr=cfg.lr,
                            betas=(cfg.beta1, cfg.beta2), eps=1e-8, weight_decay=cfg.wd)
    params = [p for g in opt.param_groups for p in g["params"]]
    vx, vy = C.val_windows(cfg.val_n, cfg.seq)

    def set_state(ck, k):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(ck[n]["w"])
                opt.state[p] = {"step": torch.tensor(float(k)), "exp_avg": ck[n]["m"].clone(),
                                "exp_avg_sq": ck[n]["v"].clone()}

    def train(k, h):
        curve = []
        for step in range(k, k + h):
            lr = C.lr_at(step, cfg.lr, cfg.steps, cfg.warmup, cfg.schedule)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = C.batch_at(step, cfg.seed, cfg.batch, cfg.seq)
            loss = C.lm_loss(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            curve.append(loss.item())
        return curve

    rows = []
    for k in a.step:
        ck = C.load_ck(os.path.join(a.dump, "step-%d.safetensors" % k))
        bp = os.path.join(a.dump, "base-%d.safetensors" % k)
        base = C.load_ck(bp) if os.path.exists(bp) else None
        set_state(ck, k)
        v0 = C.val_loss(model, vx, vy)
        train(k, a.horizon)
        vh = C.val_loss(model, vx, vy)
        print("%5d %-60s val %.4f -> after %d steps %.4f" % (k, "original", v0, a.horizon, vh), flush=True)
        for spec in a.variant:
            name, _, js = spec.partition(":")
            args = json.loads(js) if js else {}
            codec = S.Sim(name if name in S.PRESETS else "defaults", args)
            codec.calls, codec._kf = 2, False
            with tempfile.TemporaryDirectory() as work:
                rest, info = codec.file(ck, base, k, work)
            if a.exact_moments:
                for n in rest:
                    rest[n]["m"], rest[n]["v"] = ck[n]["m"], ck[n]["v"]
            e = R.errors(ck, rest, base)
            set_state(rest, k)
            j0 = C.val_loss(model, vx, vy)
            train(k, a.horizon)
            jh = C.val_loss(model, vx, vy)
            nparam = sum(x["w"].numel() for x in ck.values())
            row = {"step": k, "variant": spec, "ratio": info["raw_bytes"] / info["bytes"], "bpp": 8 * info["bytes"] / nparam,
                   "jump_pct": 100 * (j0 / v0 - 1), "gap_h_pct": 100 * (jh / vh - 1), "err": e}
            rows.append(row)
            print("%5d %-60s %5.1fx %5.2f bpp | jump %+6.2f%%  after %d: %+6.2f%% | dW %.3f m %.3f v %.3f u %.3f vlog %.2f" % (
                k, spec[:60], row["ratio"], row["bpp"], row["jump_pct"], a.horizon, row["gap_h_pct"], e["dw"] or 0, e["m"],
                e["v"], e["u"], e.get("vlog2", 0)), flush=True)
    if a.json:
        C.write_json(a.json, rows)


if __name__ == "__main__":
    main()
