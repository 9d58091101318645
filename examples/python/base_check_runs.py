"""Measure what a plausible base looks like, for `excp compress`'s base check.

Trains small real models (GPT-2, Llama and Qwen2 from transformers, and a
plain MLP) with torch AdamW, two seeds per configuration, several learning
rates (a large one with warm-up among them), weight decay, betas and dtypes,
and keeps snapshots (weights, exp_avg, exp_avg_sq) at many steps. Then, for
every pair (base, current) it prints:

- the sign agreement of dW = W_cur - W_base with -exp_avg of the current
  checkpoint: the share of elements with dW != 0 and m != 0 where
  sign(dW) = -sign(m) (Adam moves each weight against its first moment);
- the overall and the largest per-tensor ||dW|| / ||W_cur||;

for consecutive checkpoints (every interval from 1 to 300 steps, the first
one against the initialisation included), for the base and current swapped,
and for a base from the other seed's run (same shapes).

    /work/venv/bin/python examples/python/base_check_runs.py [--out runs.json] [--fixtures DIR]

--fixtures DIR also writes three small safetensors checkpoints in excp's
convention (NAME, NAME.exp_avg, NAME.exp_avg_sq) for spec/base-check.spec.ts.
One thread, deterministic (seeds 1 and 2), about a minute.
"""
import argparse
import json
import math
import sys

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

torch.set_num_threads(1)
VOCAB, SEQ, BATCH = 64, 16, 8
SNAPSHOTS = [0, 1, 2, 3, 5, 10, 20, 30, 50, 75, 100, 150, 200, 250, 300]


def gpt2():
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=SEQ, tie_word_embeddings=True))


def gpt2_tiny():
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=SEQ, tie_word_embeddings=True))


def gpt2_wide():
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=128, n_layer=2, n_head=4, n_positions=SEQ, tie_word_embeddings=True))


def llama():
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ))


def qwen2():
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ,
                                        tie_word_embeddings=False))


class Mlp(torch.nn.Module):
    """Token -> next token through two hidden layers (a non-transformer shape)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, 48)
        self.fc1 = torch.nn.Linear(48, 96)
        self.fc2 = torch.nn.Linear(96, 48)
        self.out = torch.nn.Linear(48, VOCAB)

    def forward(self, input_ids, labels):
        h = self.emb(input_ids)
        h = torch.relu(self.fc1(h))
        h = torch.relu(self.fc2(h))
        logits = self.out(h)[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
        return type("Out", (), {"loss": loss})


# name -> (model factory, dtype, lr, warm-up steps, weight decay, betas)
CONFIGS = {
    "gpt2-lr1e-3": (gpt2, torch.float32, 1e-3, 10, 0.01, (0.9, 0.999)),
    "gpt2-lr1e-2-warmup": (gpt2, torch.float32, 1e-2, 20, 0.01, (0.9, 0.999)),
    "gpt2-tiny-lr1e-3": (gpt2_tiny, torch.float32, 1e-3, 10, 0.01, (0.9, 0.999)),
    "gpt2-wide-lr6e-4": (gpt2_wide, torch.float32, 6e-4, 30, 0.1, (0.9, 0.95)),
    "gpt2-lr1e-4": (gpt2, torch.float32, 1e-4, 0, 0.0, (0.9, 0.999)),
    "llama-lr3e-3-wd0.1": (llama, torch.float32, 3e-3, 10, 0.1, (0.9, 0.95)),
    "llama-bf16-lr1e-3": (llama, torch.bfloat16, 1e-3, 10, 0.01, (0.9, 0.999)),
    "qwen2-lr3e-3": (qwen2, torch.float32, 3e-3, 5, 0.01, (0.9, 0.999)),
    "mlp-lr3e-2": (Mlp, torch.float32, 3e-2, 0, 0.0, (0.9, 0.999)),
}


def markov_batches(steps, seed):
    """Tokens from a fixed sparse Markov chain (learnable), sampled with the run's seed."""
    g = torch.Generator().manual_seed(99)
    trans = torch.zeros(VOCAB, VOCAB)
    for a in range(VOCAB):
        nxt = torch.randperm(VOCAB, generator=g)[:4]
        trans[a, nxt] = torch.tensor([0.55, 0.25, 0.15, 0.05])
    g = torch.Generator().manual_seed(1000 + seed)
    for _ in range(steps):
        x = torch.empty(BATCH, SEQ, dtype=torch.long)
        x[:, 0] = torch.randint(0, VOCAB, (BATCH,), generator=g)
        for t in range(1, SEQ):
            x[:, t] = torch.multinomial(trans[x[:, t - 1]], 1, generator=g).squeeze(1)
        yield x


def train(name, seed):
    factory, dtype, lr, warmup, wd, betas = CONFIGS[name]
    torch.manual_seed(seed)
    model = factory().to(dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, betas=betas)
    total = SNAPSHOTS[-1]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))
    names = {id(p): n for n, p in model.named_parameters()}
    snaps = {}

    def snapshot(step):
        state = {}
        for group in opt.param_groups:
            for p in group["params"]:
                s = opt.state.get(p, {})
                w = p.detach().float().numpy().copy()
                m = s["exp_avg"].float().numpy().copy() if "exp_avg" in s else np.zeros_like(w)
                v = s["exp_avg_sq"].float().numpy().copy() if "exp_avg_sq" in s else np.zeros_like(w)
                state[names[id(p)]] = (w, m, v)
        snaps[step] = state

    snapshot(0)
    losses = []
    for step, x in enumerate(markov_batches(total, seed), start=1):
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step in SNAPSHOTS:
            snapshot(step)
    return snaps, losses


def pair_stats(base, cur):
    """Candidate statistics of one (base, current) pair, overall and per tensor.

    agreement: share of elements (dW != 0, m != 0) where sign(dW) = -sign(m);
    weighted: the same, each element weighted by |u|, u = m / (sqrt(v) + 1e-8);
    top: the agreement over the tenth of elements with the largest |u|;
    corr: Pearson correlation of dW with -u;
    cosine: <W, W_base> / (||W|| ||W_base||);
    ratio: ||dW|| / ||W||.
    """
    agree = total = 0
    wa = wt = 0.0
    ea = et = 0.0
    ta = tt = 0
    sxy = sxx = syy = 0.0
    dw2 = w2 = b2 = wb = 0.0
    worst_ratio = 0.0
    lowest_agreement = 1.0
    for name, (w, m, v) in cur.items():
        bw = base[name][0].astype(np.float64).ravel()
        wc = w.astype(np.float64).ravel()
        dw = wc - bw
        mm = m.astype(np.float64).ravel()
        u = mm / (np.sqrt(np.maximum(v.astype(np.float64).ravel(), 0)) + 1e-8)
        mask = (dw != 0) & (mm != 0)
        agreeing = (dw * mm) < 0
        a = int(np.count_nonzero(agreeing & mask))
        n = int(np.count_nonzero(mask))
        agree += a
        total += n
        ea += float(np.sum((dw * dw)[agreeing & mask]))
        et += float(np.sum((dw * dw)[mask]))
        wa += float(np.sum(np.abs(u)[agreeing & mask]))
        wt += float(np.sum(np.abs(u)[mask]))
        if n >= 10:
            cut = np.quantile(np.abs(u[mask]), 0.9)
            top = mask & (np.abs(u) >= cut)
            ta += int(np.count_nonzero(agreeing & top))
            tt += int(np.count_nonzero(top))
        if n >= 256:
            lowest_agreement = min(lowest_agreement, a / n)
        sxy += float(np.dot(dw, -u))
        sxx += float(np.dot(dw, dw))
        syy += float(np.dot(u, u))
        d2 = float(np.dot(dw, dw))
        ww = float(np.dot(wc, wc))
        dw2 += d2
        w2 += ww
        b2 += float(np.dot(bw, bw))
        wb += float(np.dot(wc, bw))
        if ww > 0:
            worst_ratio = max(worst_ratio, math.sqrt(d2 / ww))
    # S: how much more the weights with a strong, consistent gradient (large |u|)
    # moved than those with a weak one (small |u|), per tensor, geometric mean.
    logs = []
    for name, (w, m, v) in cur.items():
        dw = np.abs(w.astype(np.float64).ravel() - base[name][0].astype(np.float64).ravel())
        u = np.abs(m.astype(np.float64).ravel()) / (np.sqrt(np.maximum(v.astype(np.float64).ravel(), 0)) + 1e-8)
        if u.size < 256 or not np.any(dw):
            continue
        order = np.argsort(u)
        lo = np.median(dw[order[: u.size // 2]])
        hi = np.median(dw[order[-(u.size // 10):]])
        if lo > 0 and hi > 0:
            logs.append((math.log(hi / lo), u.size))
    spread = math.exp(sum(l * n for l, n in logs) / sum(n for _, n in logs)) if logs else None
    # C: the per-tensor cosine of W and W_base, element-weighted.
    cs = cn = 0.0
    for name, (w, _m, _v) in cur.items():
        a = w.astype(np.float64).ravel()
        b = base[name][0].astype(np.float64).ravel()
        na, nb = float(np.dot(a, a)), float(np.dot(b, b))
        if a.size >= 64 and na > 0 and nb > 0:
            cs += a.size * float(np.dot(a, b)) / math.sqrt(na * nb)
            cn += a.size
    return {
        "tcos": cs / cn if cn else None,
        "spread": spread,
        "agreement": agree / total if total else None,
        "energy": ea / et if et else None,
        "weighted": wa / wt if wt else None,
        "top": ta / tt if tt else None,
        "corr": sxy / math.sqrt(sxx * syy) if sxx and syy else None,
        "cosine": wb / math.sqrt(w2 * b2) if w2 and b2 else None,
        "counted": total,
        "lowest_tensor_agreement": lowest_agreement,
        "ratio": math.sqrt(dw2 / w2) if w2 else None,
        "worst_tensor_ratio": worst_ratio,
    }


def write_fixture(path, state, moments):
    """A safetensors checkpoint in excp's convention; a base needs only its weights."""
    from safetensors.torch import save_file
    tensors = {}
    for name, (w, m, v) in state.items():
        tensors[name] = torch.from_numpy(w).contiguous()
        if moments:
            tensors[f"{name}.exp_avg"] = torch.from_numpy(m).contiguous()
            tensors[f"{name}.exp_avg_sq"] = torch.from_numpy(v).contiguous()
    save_file(tensors, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write every pair's numbers as JSON")
    ap.add_argument("--fixtures", help="write the spec fixtures into this folder")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    a = ap.parse_args()
    rows = []
    for name in a.configs:
        runs = {seed: train(name, seed) for seed in (1, 2)}
        print(f"{name}: loss {runs[1][1][0]:.3f} -> {runs[1][1][-1]:.3f} (seed 1), {runs[2][1][-1]:.3f} (seed 2)", file=sys.stderr)
        s1, s2 = runs[1][0], runs[2][0]
        for i, b in enumerate(SNAPSHOTS):
            for c in SNAPSHOTS[i + 1:]:
                rows.append({"config": name, "kind": "same run", "base": b, "current": c, **pair_stats(s1[b], s1[c])})
                rows.append({"config": name, "kind": "swapped", "base": c, "current": b, **pair_stats(s1[c], s1[b])}) if b > 0 else None
        for b in SNAPSHOTS:
            for c in SNAPSHOTS[1:]:
                # The share of the residual that is not this run's training: W1(0) - W2(b).
                e2 = t2 = 0.0
                for n, (w, _m, _v) in s1[c].items():
                    e = s1[0][n][0].astype(np.float64) - s2[b][n][0].astype(np.float64)
                    d = w.astype(np.float64) - s2[b][n][0].astype(np.float64)
                    e2 += float(np.sum(e * e))
                    t2 += float(np.sum(d * d))
                rows.append({"config": name, "kind": "other run", "base": b, "current": c, "foreign": math.sqrt(e2 / t2),
                             **pair_stats(s2[b], s1[c])})
        if a.fixtures and name == "gpt2-tiny-lr1e-3":
            import os
            os.makedirs(a.fixtures, exist_ok=True)
            write_fixture(f"{a.fixtures}/run1-step150.safetensors", s1[150], True)
            write_fixture(f"{a.fixtures}/run1-step100.safetensors", s1[100], False)
            write_fixture(f"{a.fixtures}/run1-step0.safetensors", s1[0], False)
            write_fixture(f"{a.fixtures}/run2-step100.safetensors", s2[100], False)
            with open(f"{a.fixtures}/expected.json", "w") as f:
                pick = {"run1-step100": ("same run", 100), "run1-step0": ("same run", 0), "run2-step100": ("other run", 100)}
                out = {}
                for key, (kind, b) in pick.items():
                    row = next(r for r in rows if r["config"] == name and r["kind"] == kind and r["base"] == b and r["current"] == 150)
                    out[key] = {k: row[k] for k in ("tcos", "agreement", "ratio")}
                json.dump({"current": "run1-step150", "bases": out}, f, indent=1)
    rows = [r for r in rows if r is not None]
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)
    summarize(rows)


def summarize(rows):
    def span(sel, key):
        vals = [r[key] for r in rows if sel(r) and r[key] is not None]
        return (min(vals), max(vals), len(vals)) if vals else None

    groups = [
        ("consecutive, 1-50 steps apart, from init", lambda r: r["kind"] == "same run" and r["base"] == 0 and r["current"] <= 50),
        ("consecutive, 1-50 steps apart, after init", lambda r: r["kind"] == "same run" and r["base"] > 0 and r["current"] - r["base"] <= 50),
        ("same run, 51-100 steps apart", lambda r: r["kind"] == "same run" and 50 < r["current"] - r["base"] <= 100),
        ("same run, 101-300 steps apart", lambda r: r["kind"] == "same run" and r["current"] - r["base"] > 100),
        ("swapped (base newer than current)", lambda r: r["kind"] == "swapped"),
        ("other run, same shapes", lambda r: r["kind"] == "other run"),
    ]
    for label, sel in groups:
        parts = []
        for key in ("tcos", "energy", "agreement", "weighted", "top", "corr", "cosine", "ratio", "worst_tensor_ratio"):
            lo, hi, n = span(sel, key)
            parts.append(f"{key} {lo:.3f}..{hi:.3f}")
        print(f"{label} ({n} pairs): " + "; ".join(parts))


if __name__ == "__main__":
    main()
