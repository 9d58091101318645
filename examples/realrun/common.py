"""Shared pieces of the real-run experiment: data, models, schedules,
checkpoint dictionaries, safetensors I/O and the excp command line.

Everything is deterministic given (seed, step): the batch of step s is drawn
from a generator seeded by (seed, s), so an interrupted run sees the same data
as an uninterrupted one.
"""
import json
import math
import os
import shlex
import subprocess
import sys

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))


# ---------------------------------------------------------------- excp CLI

def excp_command(explicit=None):
    """The excp command line: --excp, else $EXCP, else <repo>/dist/lib/cli.js
    (built by npm ci). To compare versions, point --excp at another build."""
    cmd = explicit or os.environ.get("EXCP")
    if cmd:
        return shlex.split(cmd)
    local = os.path.join(REPO, "dist", "lib", "cli.js")
    if not os.path.exists(local):
        sys.exit("excp is not built: run npm ci (or npm run build) in %s, or pass --excp" % REPO)
    return ["node", local]


def run_excp(cmd, args, capture=False):
    p = subprocess.run(cmd + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        raise RuntimeError("excp %s failed (%d): %s" % (" ".join(args), p.returncode, p.stderr.decode()[-2000:]))
    return p.stdout.decode() if capture else None


# ---------------------------------------------------------------- data

_CORPUS = None


def corpus():
    """Byte-level text: the .py files of the running interpreter's standard
    library (no site-packages), sorted by path. Every 20th file is
    validation, the rest training. Returns (train, val) uint8 tensors."""
    global _CORPUS
    if _CORPUS is not None:
        return _CORPUS
    root = os.path.dirname(os.__file__)
    paths = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in ("site-packages", "__pycache__"))
        paths += [os.path.join(d, f) for f in files if f.endswith(".py")]
    paths.sort(key=lambda p: os.path.relpath(p, root))
    train, val = [], []
    for i, p in enumerate(paths):
        with open(p, "rb") as f:
            (val if i % 20 == 0 else train).append(f.read())
    tr = torch.from_numpy(np.frombuffer(b"".join(train), dtype=np.uint8).copy())
    va = torch.from_numpy(np.frombuffer(b"".join(val), dtype=np.uint8).copy())
    _CORPUS = (tr, va)
    return _CORPUS


def batch_at(step, seed, batch, seq):
    """The training batch of step `step` (0-based): (x, y) int64, windows of
    seq + 1 bytes at offsets drawn from a generator seeded by (seed, step)."""
    train, _ = corpus()
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    off = torch.randint(0, len(train) - seq - 1, (batch,), generator=g)
    w = torch.stack([train[o:o + seq + 1] for o in off.tolist()]).long()
    return w[:, :-1], w[:, 1:]


def val_windows(n, seq):
    """A fixed validation set (same for every run): n windows evenly spaced."""
    _, val = corpus()
    offs = np.linspace(0, len(val) - seq - 2, n).astype(np.int64)
    w = torch.stack([val[o:o + seq + 1] for o in offs.tolist()]).long()
    return w[:, :-1], w[:, 1:]


# ---------------------------------------------------------------- models

class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.Linear(d, 3 * d)
        self.attn_proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.attn(self.ln1(x)).split(d, dim=2)
        sh = lambda z: z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(sh(q), sh(k), sh(v), is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp_proj(F.gelu(self.mlp_fc(self.ln2(x))))


class GPT(nn.Module):
    """A nanoGPT-style byte model: learned positions, pre-LN, untied head."""

    def __init__(self, d, layers, heads, seq, vocab=256):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.pos_emb = nn.Embedding(seq, d)
        self.blocks = nn.ModuleList([Block(d, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        for n, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers) if n.endswith("proj.weight") else 0.02)
            elif n.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1])
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


class HFWrap(nn.Module):
    """A transformers causal LM that returns logits (torch loop)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, idx):
        return self.m(input_ids=idx).logits


def hf_model(family, d, layers, heads, seq):
    import transformers as tf
    inter = int(d * 8 / 3 + 7) // 8 * 8
    if family == "llama":
        cfg = tf.LlamaConfig(vocab_size=256, hidden_size=d, intermediate_size=inter, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                             max_position_embeddings=2 * seq + 2, tie_word_embeddings=False,
                             attention_dropout=0.0, use_cache=False)
        return tf.LlamaForCausalLM(cfg)
    if family == "qwen2":
        cfg = tf.Qwen2Config(vocab_size=256, hidden_size=d, intermediate_size=inter, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                             max_position_embeddings=2 * seq + 2, tie_word_embeddings=True,
                             attention_dropout=0.0, use_cache=False)
        return tf.Qwen2ForCausalLM(cfg)
    if family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=256, n_positions=2 * seq + 2, n_embd=d, n_layer=layers, n_head=heads,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False, tie_word_embeddings=True)
        return tf.GPT2LMHeadModel(cfg)
    raise ValueError(family)


def build_model(family, d, layers, heads, seq, seed, hf_raw=False):
    torch.manual_seed(seed)
    if family == "gpt":
        if hf_raw:
            raise ValueError("family gpt runs only in the torch loop")
        return GPT(d, layers, heads, seq)
    m = hf_model(family, d, layers, heads, seq)
    return m if hf_raw else HFWrap(m)


def lm_loss(logits, y):
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def val_loss(model, vx, vy, bs=32):
    model.eval()
    tot = 0.0
    for i in range(0, len(vx), bs):
        tot += lm_loss(model(vx[i:i + bs]), vy[i:i + bs]).item() * len(vx[i:i + bs])
    model.train()
    return tot / len(vx)


def lr_at(step, lr, steps, warmup, schedule):
    """LR of the step that takes the model from `step` to `step + 1`,
    as transformers' get_*_schedule_with_warmup define it."""
    if step < warmup:
        return lr * step / max(1, warmup)
    if schedule == "constant":
        return lr
    prog = (step - warmup) / max(1, steps - warmup)
    if schedule == "linear":
        return lr * max(0.0, 1.0 - prog)
    return lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * prog)))


def param_kind(name):
    """embedding / norm / attn / mlp / head, by the parameter's name."""
    n = name.lower()
    if "lm_head" in n or n.startswith("head") or ".head." in n:
        return "head"
    if any(k in n for k in ("emb", "wte", "wpe", "embed_tokens")):
        return "embedding"
    if any(k in n for k in ("ln", "norm")):
        return "norm"
    if any(k in n for k in ("attn", "q_proj", "k_proj", "v_proj", "o_proj", "c_attn")):
        return "attn"
    if any(k in n for k in ("mlp", "fc", "gate_proj", "up_proj", "down_proj")):
        return "mlp"
    return "other"


# ---------------------------------------------------------------- checkpoints
#
# A checkpoint here is {name: {"w": tensor, "m": tensor, "v": tensor}} in the
# parameters' own dtype (moments in the optimizer's dtype). Tensors without
# optimizer state carry only "w".

def to_flat(ck):
    out = {}
    for n, d in ck.items():
        out[n] = d["w"].contiguous()
        if "m" in d:
            out[n + ".exp_avg"] = d["m"].contiguous()
            out[n + ".exp_avg_sq"] = d["v"].contiguous()
    return out


def from_flat(flat):
    ck = {}
    for k, t in flat.items():
        if k.endswith(".exp_avg"):
            ck.setdefault(k[:-8], {})["m"] = t
        elif k.endswith(".exp_avg_sq"):
            ck.setdefault(k[:-11], {})["v"] = t
        else:
            ck.setdefault(k, {})["w"] = t
    return ck


def save_ck(ck, path):
    from safetensors.torch import save_file
    save_file(to_flat(ck), path)


def load_ck(path):
    from safetensors.torch import load_file
    return from_flat(load_file(path))


def ck_bytes(ck):
    return sum(t.numel() * t.element_size() for d in ck.values() for t in d.values())


def clone_ck(ck):
    return {n: {k: t.detach().clone() for k, t in d.items()} for n, d in ck.items()}


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)
