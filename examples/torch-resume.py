#!/usr/bin/python3
"""Resume training from a restored checkpoint folder and compare with the original.

    /usr/bin/python3 examples/torch-resume.py ORIGINAL_DIR RESTORED_DIR [--steps N]

Both folders are Trainer-style checkpoints of the tiny model of
spec/fixtures/torch/make_fixtures.py (imported from there: same model, same
AdamW groups, same LambdaLR schedule, same seeded data). For each folder it
loads the weights (safetensors, parsed here: Debian has no
python3-safetensors), optimizer.pt and scheduler.pt, then takes N more AdamW
steps on the same batches and prints both losses side by side.

torch.load is called WITHOUT weights_only: torch 1.13's restricted loader
cannot read any optimizer state_dict (it lacks the BINFLOAT opcode used for
lr/betas/eps). A plain torch.load runs the pickle, so only point this at
folders you trust; excp itself never executes pickle, and the restored
optimizer.pt carries the original data.pkl byte for byte.
"""
import argparse
import importlib.util
import json
import os
import random
import struct

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("make_fixtures", os.path.join(HERE, "..", "spec", "fixtures", "torch", "make_fixtures.py"))
fx = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fx)

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def load_safetensors(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".safetensors"):
            continue
        with open(os.path.join(folder, name), "rb") as f:
            blob = f.read()
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + n])
        for key, info in header.items():
            if key == "__metadata__":
                continue
            a, b = info["data_offsets"]
            raw = blob[8 + n + a:8 + n + b]
            dtype = DTYPES[info["dtype"]]
            if dtype == torch.bfloat16:
                t = torch.from_numpy(np.frombuffer(raw, dtype=np.int16).copy()).view(torch.bfloat16)
            else:
                t = torch.from_numpy(np.frombuffer(raw, dtype=np.float32 if dtype == torch.float32 else np.float16).copy())
            out[key] = t.reshape(info["shape"])
    return out


def resume(folder, steps, start_step):
    bin_path = os.path.join(folder, "pytorch_model.bin")
    tied = os.path.exists(bin_path)  # the "bin" run: weights torch.save'd, head tied to the embedding
    weights = torch.load(bin_path) if tied else load_safetensors(folder)
    dtype = next(iter(weights.values())).dtype
    # Same RNG consumption as make_fixtures.run, so `data` is the training data.
    torch.manual_seed(fx.SEED)
    random.seed(fx.SEED)
    np.random.seed(fx.SEED)
    model = fx.Tiny().to(dtype)
    if tied:
        model.head.weight = model.embed.weight
    data = torch.randint(0, fx.VOCAB, (64, 9))
    model.load_state_dict(weights)
    decay = set(fx.decay_names(model))
    groups = [
        {"params": [p for n, p in model.named_parameters() if n in decay], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if n not in decay], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=2e-3, betas=(0.9, 0.999), eps=1e-8)
    opt.load_state_dict(torch.load(os.path.join(folder, "optimizer.pt")))  # not weights_only: see the docstring
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: fx.linear_schedule(s, num_warmup_steps=2, num_training_steps=fx.MAX_STEPS))
    sched.load_state_dict(torch.load(os.path.join(folder, "scheduler.pt")))
    losses = []
    for step in range(start_step + 1, start_step + steps + 1):
        batch = data[(step * 8) % 64:(step * 8) % 64 + 8]
        logits = model(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.float().reshape(-1, fx.VOCAB), batch[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, {n: p.detach().float().clone() for n, p in model.named_parameters()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("original")
    ap.add_argument("restored")
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    with open(os.path.join(args.original, "trainer_state.json")) as f:
        start = json.load(f)["global_step"]
    a, wa = resume(args.original, args.steps, start)
    b, wb = resume(args.restored, args.steps, start)
    print(f"torch {torch.__version__}; resuming at step {start} for {args.steps} AdamW steps")
    print("step  loss(original)  loss(restored)  difference")
    for i, (x, y) in enumerate(zip(a, b)):
        print(f"{start + i + 1:4d}  {x:14.6f}  {y:14.6f}  {y - x:+.2e}")
    drift = max(float((wa[n] - wb[n]).abs().max()) for n in wa)
    scale = max(float(wa[n].abs().max()) for n in wa)
    print(f"after {args.steps} steps: max |W_restored - W_original| = {drift:.3e} (max |W| = {scale:.3f})")


if __name__ == "__main__":
    main()
