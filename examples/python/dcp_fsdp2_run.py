#!/usr/bin/env python3
"""A 2-rank FSDP2 training run whose DCP checkpoints excp compresses per rank, in the loop (issue #15).

    /work/venv/bin/python examples/python/dcp_fsdp2_run.py [--out runs/dcp-fsdp2] [--steps 240] [--every 20]
                                                         [--resume-steps 20] [--excp "node dist/lib/cli.js"]

CPU only, gloo, two processes (torch.multiprocessing.spawn), one thread each. Build excp first (npm run build).

What it does:
  1. Trains a small Llama (transformers LlamaForCausalLM: hidden 256, 4 layers, 4 heads / 2 KV heads, MLP 688,
     vocab 4096, 5.0M parameters, fp32) with FSDP2 (fully_shard per decoder layer, then the root) and AdamW
     (lr 1e-3, betas 0.9/0.95, weight decay 0.1, cosine after 20 warm-up steps) on a synthetic bigram language.
  2. Every --every steps: dcp.save({'model', 'optim'} of get_state_dict) into OUT/dcp/step-N; then, in the loop,
     each rank compresses its own files against its restored previous step and restores them (closed loop):
        excp compress OUT/dcp/step-N --base OUT/restored/step-PREV --rank R -o OUT/excp/step-N
        excp restore  OUT/excp/step-N --base OUT/restored/step-PREV --rank R -o OUT/restored/step-N
     (the first save is a keyframe: no --base). Rank 0 also writes the same state as a Hugging Face Trainer
     folder OUT/trainer/checkpoint-N (model.safetensors, optimizer.pt keyed by param id, scheduler.pt,
     trainer_state.json, and optimizer_param_names.json as examples/python/excp_callback.py writes it),
     gathered to full size, for the ratio comparison.
  3. Compresses the Trainer folders the same way (closed loop, one container per step, --param-map from
     optimizer_param_names.json: the model's RMSNorm weights share a shape and a group). --skip-train reruns
     steps 3 to 5 on OUT's training run.
  4. Resumes training for --resume-steps from the last original and the last restored DCP folder (dcp.load into
     the same 2-rank sharding) on the same batches, and compares the losses.
  5. Writes OUT/summary.json and prints a table: per step, each rank's container ratio, the step's ratio (all ranks),
     and the Trainer folder's ratio.
"""
import argparse
import json
import math
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
import torch.nn.functional as F

torch.set_num_threads(1)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SEED, VOCAB, SEQ, BATCH, WARMUP = 1234, 4096, 128, 8, 20
NAMES_FILE = "optimizer_param_names.json"


def make_model():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(SEED)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=SEQ, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def shard(model):
    from torch.distributed.fsdp import fully_shard
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)


def make_optimizer(model, total):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    cosine = lambda s: (s + 1) / WARMUP if s < WARMUP else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - WARMUP) / max(1, total - WARMUP)))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, cosine)


def batches(rank, first, n):
    """A synthetic language: a fixed sparse bigram table (8 likely successors per token), a stream per rank."""
    table = torch.Generator().manual_seed(SEED)
    succ = torch.randint(0, VOCAB, (VOCAB, 8), generator=table)
    g = torch.Generator().manual_seed(SEED + 1 + rank)
    out = []
    for step in range(first + n):
        tok = torch.randint(0, VOCAB, (BATCH,), generator=g)
        rows = [tok]
        for _ in range(SEQ - 1):
            pick = torch.randint(0, 8, (BATCH,), generator=g)
            tok = succ[tok, pick]
            rows.append(tok)
        if step >= first:
            out.append(torch.stack(rows, 1))
    return out


def loss_of(model, batch):
    logits = model(input_ids=batch[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, VOCAB).float(), batch[:, 1:].reshape(-1))


def excp(args, *argv):
    t0 = time.time()
    cmd = shlex.split(args.excp) + [str(a) for a in argv] + ["--quiet"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
    if r.stderr.strip():
        print(r.stderr.strip(), file=sys.stderr)
    return time.time() - t0


def trainer_folder(model, opt, sched, step, path):
    """The state as a Hugging Face Trainer folder (rank 0 writes; the gathers are collective)."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=full)
    osd = get_optimizer_state_dict(model, opt, options=full)
    if dist.get_rank() != 0:
        return
    os.makedirs(path, exist_ok=True)
    save_file({k: v.contiguous() for k, v in msd.items()}, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    # optimizer.state_dict() as torch.optim writes it: state and params keyed by id, in param_groups order.
    order = [n for g in osd["param_groups"] for n in g["params"]]
    ids = {n: i for i, n in enumerate(order)}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [ids[n] for n in g["params"]]} for g in osd["param_groups"]]
    torch.save({"state": {ids[n]: s for n, s in osd["state"].items()}, "param_groups": groups}, os.path.join(path, "optimizer.pt"))
    torch.save(sched.state_dict(), os.path.join(path, "scheduler.pt"))
    # What examples/python/excp_callback.py writes: the names in optimizer order, for excp's --param-map.
    with open(os.path.join(path, NAMES_FILE), "w") as f:
        json.dump(order, f)
    with open(os.path.join(path, "trainer_state.json"), "w") as f:
        json.dump({"global_step": step, "log_history": []}, f, indent=2)


def train(rank, world, port, args, result_path):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.checkpoint.state_dict import get_state_dict
    out = os.path.abspath(args.out)
    model = make_model()
    shard(model)
    opt, sched = make_optimizer(model, args.steps)
    data = batches(rank, 0, args.steps)
    log = {"losses": [], "saves": []}
    prev = None
    t_train = 0.0
    for step in range(1, args.steps + 1):
        t0 = time.time()
        loss = loss_of(model, data[step - 1])
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        t_train += time.time() - t0
        log["losses"].append(loss.item())
        if step % args.every:
            continue
        folder = os.path.join(out, "dcp", f"step-{step}")
        msd, osd = get_state_dict(model, opt)
        t0 = time.time()
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=folder)
        t_save = time.time() - t0
        trainer_folder(model, opt, sched, step, os.path.join(out, "trainer", f"checkpoint-{step}"))
        dist.barrier()
        # In the loop: this rank's files, against this rank's restored previous step.
        cdir, rdir = os.path.join(out, "excp", f"step-{step}"), os.path.join(out, "restored", f"step-{step}")
        base = ["--base", os.path.join(out, "restored", f"step-{prev}")] if prev else []
        t_c = excp(args, "compress", folder, *base, "--rank", rank, "-o", cdir)
        t_r = excp(args, "restore", cdir, *base, "--rank", rank, "-o", rdir)
        dist.barrier()
        log["saves"].append({"step": step, "loss": loss.item(), "save_s": t_save, "compress_s": t_c, "restore_s": t_r})
        if rank == 0:
            print(f"step {step}: loss {loss.item():.4f}, dcp.save {t_save:.1f}s, excp compress {t_c:.1f}s, restore {t_r:.1f}s (rank 0)", flush=True)
        prev = step
    log["train_s"] = t_train
    with open(f"{result_path}.{rank}", "w") as f:
        json.dump(log, f)
    dist.barrier()
    dist.destroy_process_group()


def resume(rank, world, port, args, result_path):
    """Load the last original and the last restored DCP folder into the same sharding; train on the same batches."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    out = os.path.abspath(args.out)
    last = args.steps - args.steps % args.every
    data = batches(rank, last, args.resume_steps)
    curves = {}
    for name, folder in (("original", os.path.join(out, "dcp", f"step-{last}")), ("restored", os.path.join(out, "restored", f"step-{last}"))):
        model = make_model()
        shard(model)
        opt, sched = make_optimizer(model, args.steps + args.resume_steps)
        msd, osd = get_state_dict(model, opt)
        sd = {"model": msd, "optim": osd}
        dcp.load(sd, checkpoint_id=folder)
        set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        for _ in range(last):
            sched.step()
        losses = []
        for batch in data:
            loss = loss_of(model, batch)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            t = loss.detach().clone()
            dist.all_reduce(t)
            losses.append(t.item() / world)
        curves[name] = losses
    if rank == 0:
        with open(result_path, "w") as f:
            json.dump(curves, f)
    dist.barrier()
    dist.destroy_process_group()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def inspect(args, container):
    cmd = shlex.split(args.excp) + ["inspect", container, "--json"]
    r = json.loads(subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    return r["originalBytes"], r["containerBytes"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "dcp-fsdp2"))
    ap.add_argument("--steps", type=int, default=240)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--resume-steps", type=int, default=20)
    ap.add_argument("--excp", default="node dist/lib/cli.js")
    ap.add_argument("--skip-train", action="store_true", help="reuse OUT's training run (steps 3 to 5 only)")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    result = os.path.join(out, ".train.json")
    if not args.skip_train:
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        t0 = time.time()
        mp.spawn(train, args=(2, free_port(), args, result), nprocs=2, join=True)
        print(f"training + in-loop compression: {time.time() - t0:.0f} s", flush=True)
    logs = [json.load(open(f"{result}.{r}")) for r in range(2)]
    for d in ("trainer-excp", "trainer-restored"):
        shutil.rmtree(os.path.join(out, d), ignore_errors=True)
        os.makedirs(os.path.join(out, d))
    # The Trainer folders of the same states, compressed the same way (closed loop).
    steps = [s["step"] for s in logs[0]["saves"]]
    trainer = []
    prev = None
    for step in steps:
        folder = os.path.join(out, "trainer", f"checkpoint-{step}")
        c, r = os.path.join(out, "trainer-excp", f"checkpoint-{step}.excp"), os.path.join(out, "trainer-restored", f"checkpoint-{step}")
        base = ["--base", os.path.join(out, "trainer-restored", f"checkpoint-{prev}")] if prev else []
        names = os.path.join(folder, NAMES_FILE)
        if not os.path.exists(names):  # folders of a run made before the script wrote it: the same order
            with open(names, "w") as f:
                json.dump([n for n, _ in make_model().named_parameters()], f)
        tc = excp(args, "compress", folder, *base, "--param-map", names, "-o", c)
        tr = excp(args, "restore", c, *base, "-o", r)
        raw, packed = inspect(args, c)
        trainer.append({"step": step, "raw": raw, "container": packed, "ratio": raw / packed, "compress_s": tc, "restore_s": tr})
        prev = step
    resume_path = os.path.join(out, ".resume.json")
    mp.spawn(resume, args=(2, free_port(), args, resume_path), nprocs=2, join=True)
    curves = json.load(open(resume_path))
    rows = []
    for i, step in enumerate(steps):
        ranks = [inspect(args, os.path.join(out, "excp", f"step-{step}", f"rank-{r}.excp")) for r in range(2)]
        raw, packed = sum(a for a, _ in ranks), sum(b for _, b in ranks)
        rows.append({"step": step, "ranks": [{"raw": a, "container": b, "ratio": a / b} for a, b in ranks], "raw": raw, "container": packed,
                     "ratio": raw / packed, "trainer": trainer[i], "loss": logs[0]["saves"][i]["loss"],
                     "compress_s": [logs[r]["saves"][i]["compress_s"] for r in range(2)], "restore_s": [logs[r]["saves"][i]["restore_s"] for r in range(2)]})
    summary = {"args": vars(args), "rows": rows, "resume": curves, "train_s": [l["train_s"] for l in logs]}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("step  rank0 (raw -> excp, ratio)       rank1 (raw -> excp, ratio)       step ratio  trainer folder ratio  compress s (r0/r1)")
    for row in rows:
        r0, r1 = row["ranks"]
        print(f"{row['step']:>4}  {r0['raw']:>9} -> {r0['container']:>8} {r0['ratio']:6.1f}x  {r1['raw']:>9} -> {r1['container']:>8} {r1['ratio']:6.1f}x"
              f"  {row['ratio']:8.1f}x  {row['trainer']['ratio']:8.1f}x ({row['trainer']['raw']} -> {row['trainer']['container']})"
              f"  {row['compress_s'][0]:.1f}/{row['compress_s'][1]:.1f}")
    o, r = curves["original"], curves["restored"]
    print(f"resume from step {steps[-1]} for {len(o)} steps: loss original {o[0]:.4f} -> {o[-1]:.4f}, restored {r[0]:.4f} -> {r[-1]:.4f} "
          f"({100 * (r[-1] - o[-1]) / o[-1]:+.2f}% at the end)")


if __name__ == "__main__":
    main()
