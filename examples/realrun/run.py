"""One cell of the real-run experiment: train a small model, and at every
checkpoint compress it against the previous *restored* checkpoint, restore
it, and resume training from the restored weights and optimizer state.

  python examples/realrun/run.py --family gpt --loop torch --lr 2e-3 --interval 100 \
      --steps 1000 --warmup 50 --schedule cosine --dtype fp32 --seed 1 --codec excp \
      [--excp-args '--keep 0.3'] --out runs/gpt-defaults-s1.json

--codec none is the uninterrupted baseline (cached under runs/cache/ per
config and seed; every other codec compares against it). identity must
reproduce the baseline exactly; bf16 is the noise floor; excp is the real
command line (--excp / $EXCP); sim:NAME a simulated candidate (sim.py).

Ablations mix restored and original tensors before resuming:
  --lossy-streams w,m,v     which streams take the restored values (others: original)
  --lossy-kinds embedding,norm,attn,mlp,head,other
  --lossy-steps all|first|rest|100,200
The base of the next compression is always the state training resumed from.
"""
import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402
import loopcodecs as K  # noqa: E402

SIZES = {  # d, layers, heads
    "tiny": (64, 2, 4),
    "small": (128, 4, 4),
    "base": (192, 4, 6),
}
CONFIG_KEYS = ["family", "loop", "lr", "interval", "steps", "warmup", "schedule", "dtype", "seed", "size", "seq",
               "batch", "beta1", "beta2", "wd", "clip", "val_n"]


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="gpt", choices=["gpt", "llama", "gpt2", "qwen2"])
    ap.add_argument("--loop", default="torch", choices=["torch", "trainer"])
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--interval", type=int, default=100)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--schedule", default="cosine", choices=["cosine", "linear", "constant"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--size", default="small", choices=sorted(SIZES))
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--val-n", dest="val_n", type=int, default=256)
    ap.add_argument("--codec", default="none")
    ap.add_argument("--excp-args", default="")
    ap.add_argument("--sim-args", default="", help="JSON object passed to the sim codec")
    ap.add_argument("--excp", default=None, help="excp command (default: $EXCP, else node <repo>/dist/lib/cli.js)")
    ap.add_argument("--first", default="keyframe", choices=["keyframe", "init"],
                    help="first checkpoint: a keyframe (no base), or a residual against the saved initialisation")
    ap.add_argument("--lossy-streams", default="w,m,v")
    ap.add_argument("--lossy-kinds", default="all")
    ap.add_argument("--lossy-steps", default="all")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--tag", default="")
    ap.add_argument("--dump", default=None, help="torch loop: save each original checkpoint and its base here (offline analysis)")
    ap.add_argument("--no-cache", action="store_true")
    return ap.parse_args(argv)


def config_of(a):
    return {k: getattr(a, k) for k in CONFIG_KEYS}


def cache_path(a):
    key = hashlib.sha1(json.dumps(config_of(a), sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(C.REPO, "runs", "cache", "baseline-%s-%s-s%d-%s.json" % (a.family, a.loop, a.seed, key))


def lossy_here(a, step, first_step):
    s = a.lossy_steps
    if s == "all":
        return True
    if s == "first":
        return step == first_step
    if s == "rest":
        return step != first_step
    return str(step) in s.split(",")


def mix(a, orig, restored, step, first_step):
    """What training resumes from: restored tensors where the ablation says so."""
    if a.lossy_streams == "w,m,v" and a.lossy_kinds == "all" and a.lossy_steps == "all":
        return restored
    streams = set(a.lossy_streams.split(","))
    kinds = None if a.lossy_kinds == "all" else set(a.lossy_kinds.split(","))
    here = lossy_here(a, step, first_step)
    out = {}
    for n, d in orig.items():
        use = here and (kinds is None or C.param_kind(n) in kinds)
        out[n] = {k: (restored[n][k] if use and k in streams else t.clone()) for k, t in d.items()}
    return out


def rel(a, b):
    a = a.double()
    b = b.double()
    den = a.norm().item()
    return (a - b).norm().item() / den if den > 0 else 0.0


def errors(orig, resumed, base, eps=1e-8):
    """Relative errors of what training resumes from, over all parameters."""
    num = {"dw": 0.0, "m": 0.0, "v": 0.0, "u": 0.0}
    den = dict(num)
    vlog = [0.0, 0.0, 0.0, 0]  # sum |log2(v^/v)|, # v^ < v/4, # v^ > 4v, count
    for n, d in orig.items():
        if "m" not in d:
            continue
        w, m, v = (d[k].double() for k in ("w", "m", "v"))
        rw, rm, rv = (resumed[n][k].double() for k in ("w", "m", "v"))
        bw = base[n]["w"].double() if base is not None else None
        if bw is not None:
            num["dw"] += ((w - rw) ** 2).sum().item()
            den["dw"] += ((w - bw) ** 2).sum().item()
        num["m"] += ((m - rm) ** 2).sum().item()
        den["m"] += (m ** 2).sum().item()
        num["v"] += ((v - rv) ** 2).sum().item()
        pos = v > 0
        lr_ = torch.log2(rv[pos].clamp_min(1e-38) / v[pos])
        vlog[0] += lr_.abs().sum().item()
        vlog[1] += (lr_ < -2).sum().item()
        vlog[2] += (lr_ > 2).sum().item()
        vlog[3] += int(pos.sum().item())
        den["v"] += (v ** 2).sum().item()
        u = m / (v.sqrt() + eps)
        ru = rm / (rv.clamp_min(0).sqrt() + eps)
        num["u"] += ((u - ru) ** 2).sum().item()
        den["u"] += (u ** 2).sum().item()
    out = {k: (num[k] / den[k]) ** 0.5 if den[k] > 0 else None for k in num}
    if vlog[3]:
        out["vlog2"] = vlog[0] / vlog[3]  # mean |log2(v^ / v)|
        out["v_under4"] = vlog[1] / vlog[3]  # share of v^ < v / 4 (steps > 2x oversized)
        out["v_over4"] = vlog[2] / vlog[3]
    return out


# ---------------------------------------------------------------- torch loop

def param_groups(model, wd):
    decay, no = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 else no).append((n, p))
    return [{"params": [p for _, p in decay], "weight_decay": wd, "names": [n for n, _ in decay]},
            {"params": [p for _, p in no], "weight_decay": 0.0, "names": [n for n, _ in no]}]


def state_ck(model, opt, zero_moments=False):
    ck = {}
    for n, p in model.named_parameters():
        st = opt.state.get(p, {})
        d = {"w": p.detach().clone()}
        if zero_moments or "exp_avg" not in st:
            d["m"] = torch.zeros_like(p)
            d["v"] = torch.zeros_like(p)
        else:
            d["m"] = st["exp_avg"].detach().clone()
            d["v"] = st["exp_avg_sq"].detach().clone()
        ck[n] = d
    return ck


@torch.no_grad()
def load_state(model, opt, ck):
    for n, p in model.named_parameters():
        p.copy_(ck[n]["w"])
        st = opt.state[p]
        st["exp_avg"].copy_(ck[n]["m"])
        st["exp_avg_sq"].copy_(ck[n]["v"])


def torch_loop(a, codec, work):
    d, layers, heads = SIZES[a.size]
    model = C.build_model(a.family, d, layers, heads, a.seq, a.seed)
    if a.dtype == "bf16":
        model = model.to(torch.bfloat16)
    groups = param_groups(model, a.wd)
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups], lr=a.lr,
                            betas=(a.beta1, a.beta2), eps=1e-8, weight_decay=a.wd)
    vx, vy = C.val_windows(a.val_n, a.seq)
    nparams = sum(p.numel() for p in model.parameters())
    base = state_ck(model, opt, zero_moments=True) if (codec and a.first == "init") else None
    first_step = a.interval
    train_curve, recs = [], []
    params = [p for g in opt.param_groups for p in g["params"]]
    for step in range(a.steps):
        lr = C.lr_at(step, a.lr, a.steps, a.warmup, a.schedule)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = C.batch_at(step, a.seed, a.batch, a.seq)
        loss = C.lm_loss(model(x), y)
        loss.backward()
        if a.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, a.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        train_curve.append(round(loss.item(), 5))
        k = step + 1
        if k % a.interval == 0:
            rec = {"step": k, "lr": lr, "val": C.val_loss(model, vx, vy)}
            if codec is not None:
                ck = state_ck(model, opt)
                if a.dump:
                    os.makedirs(a.dump, exist_ok=True)
                    C.save_ck(ck, os.path.join(a.dump, "step-%d.safetensors" % k))
                    if base is not None:
                        C.save_ck(base, os.path.join(a.dump, "base-%d.safetensors" % k))
                t0 = time.time()
                if hasattr(codec, "set_context"):
                    codec.set_context(step=k, warm=k <= a.warmup, lr=C.lr_at(k, a.lr, a.steps, a.warmup, a.schedule),
                                      beta1=a.beta1, beta2=a.beta2, eps=1e-8)
                restored, info = codec.file(ck, base, k, work)
                rec["codec_s"] = round(time.time() - t0, 2)
                rec.update(info)
                rec["keyframe"] = base is None
                resumed = mix(a, ck, restored, k, first_step)
                rec["err"] = errors(ck, resumed, base)
                load_state(model, opt, resumed)
                rec["val_restored"] = C.val_loss(model, vx, vy)
                base = resumed
            recs.append(rec)
            print(json.dumps({k2: v for k2, v in rec.items() if k2 != "err"}), flush=True)
    return {"params": nparams, "train_curve": train_curve, "checkpoints": recs}


# ---------------------------------------------------------------- trainer loop

class WindowDataset(torch.utils.data.Dataset):
    """Sample i: a window of seq + 1 training bytes at an offset drawn from a
    generator seeded by (seed, i)."""

    def __init__(self, n, seed, seq):
        self.n, self.seed, self.seq = n, seed, seq
        self.train, _ = C.corpus()

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 7_000_003 + i)
        o = torch.randint(0, len(self.train) - self.seq - 1, (1,), generator=g).item()
        w = self.train[o:o + self.seq + 1].long()
        return {"input_ids": w, "labels": w.clone()}


def read_folder(folder, names):
    """A Trainer checkpoint folder as a checkpoint dict (names: optimizer order)."""
    from safetensors.torch import load_file
    sd = load_file(os.path.join(folder, "model.safetensors"))
    opt = torch.load(os.path.join(folder, "optimizer.pt"), weights_only=True)
    ck = {}
    for i, n in enumerate(names):
        st = opt["state"].get(i, {})
        key = n if n in sd else None
        if key is None:
            raise KeyError("parameter %s not in model.safetensors" % n)
        ck[n] = {"w": sd[key]}
        if "exp_avg" in st:
            ck[n]["m"] = st["exp_avg"]
            ck[n]["v"] = st["exp_avg_sq"]
    return ck, sd, opt


def write_folder(src, dst, ck, names):
    """Copy folder src to dst with weights and moments replaced by ck."""
    from safetensors.torch import load_file, save_file
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    sd = load_file(os.path.join(src, "model.safetensors"))
    for n in names:
        if n in sd:
            sd[n] = ck[n]["w"].contiguous()
    save_file(sd, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    opt = torch.load(os.path.join(src, "optimizer.pt"), weights_only=True)
    for i, n in enumerate(names):
        if i in opt["state"] and "m" in ck[n]:
            opt["state"][i]["exp_avg"] = ck[n]["m"].contiguous()
            opt["state"][i]["exp_avg_sq"] = ck[n]["v"].contiguous()
    torch.save(opt, os.path.join(dst, "optimizer.pt"))


def trainer_loop(a, codec, work):
    import transformers as tf
    from safetensors.torch import load_file
    tf.logging.set_verbosity_error()
    d, layers, heads = SIZES[a.size]
    model = C.build_model(a.family, d, layers, heads, a.seq, a.seed, hf_raw=True)
    evalm = C.build_model(a.family, d, layers, heads, a.seq, a.seed, hf_raw=True)
    vx, vy = C.val_windows(a.val_n, a.seq)
    wrap = C.HFWrap(evalm)

    def val_of(folder):
        sd = load_file(os.path.join(folder, "model.safetensors"))
        missing, unexpected = evalm.load_state_dict(sd, strict=False)
        assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
        if missing:
            evalm.tie_weights()
        return C.val_loss(wrap, vx, vy)

    ds = WindowDataset(a.steps * a.batch, a.seed, a.seq)
    sched = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[a.schedule]
    rundir = os.path.join(work, "run")
    targs = tf.TrainingArguments(
        output_dir=rundir, max_steps=a.steps, per_device_train_batch_size=a.batch, learning_rate=a.lr,
        lr_scheduler_type=sched, warmup_steps=a.warmup, weight_decay=a.wd, adam_beta1=a.beta1,
        adam_beta2=a.beta2, adam_epsilon=1e-8, max_grad_norm=a.clip, save_strategy="steps",
        save_steps=a.interval, logging_steps=1, report_to=[], seed=a.seed, data_seed=a.seed,
        bf16=(a.dtype == "bf16"), use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
        eval_strategy="no")

    class StopAt(tf.TrainerCallback):
        def __init__(self, k):
            self.k = k

        def on_step_end(self, args, state, control, **kw):
            if self.k is not None and state.global_step >= self.k:
                control.should_save = True
                control.should_training_stop = True
            return control

    nparams = sum(p.numel() for p in model.parameters())
    recs, log = [], []
    pm = os.path.join(work, "names.json")
    names = None
    if codec is None:
        tr = tf.Trainer(model=model, args=targs, train_dataset=ds)
        tr.train()
        log = tr.state.log_history
        for k in range(a.interval, a.steps + 1, a.interval):
            recs.append({"step": k, "val": val_of(os.path.join(rundir, "checkpoint-%d" % k))})
            print(json.dumps(recs[-1]), flush=True)
    else:
        resume, base = None, None
        first_step = a.interval
        for k in range(a.interval, a.steps + 1, a.interval):
            tr = tf.Trainer(model=model, args=targs, train_dataset=ds, callbacks=[StopAt(k)])
            tr.train(resume_from_checkpoint=resume)
            log += [e for e in tr.state.log_history if "loss" in e and e.get("step", 0) > (k - a.interval)]
            if names is None:
                ids = {id(p): n for n, p in model.named_parameters()}
                names = [ids[id(p)] for g in tr.optimizer.param_groups for p in g["params"]]
                C.write_json(pm, names)
            src = os.path.join(rundir, "checkpoint-%d" % k)
            dst = os.path.join(work, "restored", "checkpoint-%d" % k)
            rec = {"step": k, "lr": tr.lr_scheduler.get_last_lr()[0], "val": val_of(src)}
            t0 = time.time()
            ck, _, _ = read_folder(src, names)
            if isinstance(codec, K.Excp):
                info = codec.folder(src, base, dst, k, work, pm)
                restored, _, _ = read_folder(dst, names)
            else:
                if hasattr(codec, "set_context"):
                    codec.set_context(step=k, warm=k <= a.warmup, lr=C.lr_at(k, a.lr, a.steps, a.warmup, a.schedule),
                                      beta1=a.beta1, beta2=a.beta2, eps=1e-8)
                restored, info = codec.file(ck, read_folder(base, names)[0] if base else None, k, work)
            rec["codec_s"] = round(time.time() - t0, 2)
            rec.update(info)
            rec["keyframe"] = base is None
            resumed = mix(a, ck, restored, k, first_step)
            if resumed is not restored or not isinstance(codec, K.Excp):
                write_folder(src, dst, resumed, names)
            rec["err"] = errors(ck, resumed, read_folder(base, names)[0] if base else None)
            rec["val_restored"] = val_of(dst)
            recs.append(rec)
            print(json.dumps({k2: v for k2, v in rec.items() if k2 != "err"}), flush=True)
            if base and os.path.exists(base):
                shutil.rmtree(base)
            shutil.rmtree(src)
            base = resume = dst
    curve = {}
    for e in log:
        if "loss" in e and "step" in e:
            curve[e["step"]] = round(e["loss"], 5)
    return {"params": nparams, "train_curve": [curve.get(s) for s in range(1, a.steps + 1)], "checkpoints": recs}


# ---------------------------------------------------------------- main

def summarize(res, base):
    b = {r["step"]: r["val"] for r in base["checkpoints"]}
    resid = [r for r in res["checkpoints"] if "bytes" in r and not r.get("keyframe")]
    out = {}
    if resid:
        out["ratio_residual"] = sum(r["raw_bytes"] for r in resid) / sum(r["bytes"] for r in resid)
    allr = [r for r in res["checkpoints"] if "bytes" in r]
    if allr:
        out["ratio_all"] = sum(r["raw_bytes"] for r in allr) / sum(r["bytes"] for r in allr)
    last = res["checkpoints"][-1]
    fb = b[last["step"]]
    out["final_val_base"] = fb
    out["final_val"] = last["val"]
    out["final_val_restored"] = last.get("val_restored", last["val"])
    out["gap_pct"] = 100 * (out["final_val_restored"] / fb - 1)
    out["gap_trained_pct"] = 100 * (last["val"] / fb - 1)
    jumps = [100 * (r["val_restored"] / r["val"] - 1) for r in res["checkpoints"] if "val_restored" in r]
    if jumps:
        out["first_jump_pct"] = jumps[0]
        out["max_jump_pct"] = max(jumps)
    for r in res["checkpoints"]:
        r["val_base"] = b[r["step"]]
    return out


def main(argv=None):
    a = parse(argv)
    torch.set_num_threads(a.threads)
    os.makedirs(os.path.join(C.REPO, "runs", "cache"), exist_ok=True)
    cp = cache_path(a)
    loop = torch_loop if a.loop == "torch" else trainer_loop
    tag = "%s-%s-%s-s%d-%d" % (a.family, a.loop, a.codec.replace(":", "_"), a.seed, os.getpid())
    work = os.path.join(C.REPO, "runs", "work", tag)
    os.makedirs(work, exist_ok=True)
    try:
        if os.path.exists(cp) and not a.no_cache:
            with open(cp) as f:
                base = json.load(f)
        else:
            t0 = time.time()
            base = loop(a, None, os.path.join(work, "base"))
            base["seconds"] = round(time.time() - t0, 1)
            base["config"] = config_of(a)
            C.write_json(cp, base)
        if a.codec == "none":
            res = base
        else:
            extra = shlex.split(a.excp_args)
            sim_args = json.loads(a.sim_args) if a.sim_args else {}
            codec = K.make_codec(a.codec, C.excp_command(a.excp), extra, sim_args)
            t0 = time.time()
            res = loop(a, codec, work)
            res["seconds"] = round(time.time() - t0, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res = dict(res)
    res["config"] = config_of(a)
    res["codec"] = a.codec
    res["excp_args"] = a.excp_args
    res["sim_args"] = a.sim_args
    res["first"] = a.first
    res["lossy"] = {"streams": a.lossy_streams, "kinds": a.lossy_kinds, "steps": a.lossy_steps}
    res["tag"] = a.tag
    res["base_val_curve"] = [r["val"] for r in base["checkpoints"]]
    res["base_train_curve"] = base["train_curve"]
    res["summary"] = summarize(res, base)
    print(json.dumps(res["summary"]), flush=True)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        C.write_json(a.out, res)
    return res


if __name__ == "__main__":
    main()
