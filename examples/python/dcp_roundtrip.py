#!/usr/bin/env python3
"""Load a DCP checkpoint folder of spec/fixtures/dcp back with torch.distributed.checkpoint.load and check it.

    python examples/python/dcp_roundtrip.py FOLDER [--against ORIGINAL] [--reference-key KIND/STEP]
                                           [--max-rel-error E] [--world N]

FOLDER is one of the fixture folders (spec/fixtures/dcp/single/step-4, fsdp2/step-8, torchtitan/step-4,
accelerate/checkpoint-8, ...) or a copy of one, e.g. restored by excp. Its kind is found from what is in it
(accelerate: pytorch_model_fsdp_0/ + optimizer_0/; torchtitan: a train_state.step key; fsdp2: more than
one rank's .distcp file; else single). The script builds the same model and optimizer as
spec/fixtures/dcp/make_fixtures.py (same sharding: the 2-rank folders are loaded by two gloo processes with
the model under fully_shard, so every rank reads its own DTensor shards), calls dcp.load into the same
structure, gathers every tensor to full size, and compares:

  * with reference.json (the truth the fixtures were written from: dtype, shape, float64 sum and first
    values of every model and optimizer-state tensor, and the value of every non-tensor item), looked up
    by FOLDER's path under spec/fixtures/dcp or by --reference-key;
  * with --against ORIGINAL: every item of ORIGINAL, loaded the same way; tensors must be equal, or within
    --max-rel-error (||a - b|| / ||a||) for lossy restores.

Exit status 0 when everything matches, 1 otherwise. CPU only; needs the project's venv (torch 2.x).
"""
import argparse
import importlib.util
import io
import json
import math
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.abspath(os.path.join(HERE, "..", "..", "spec", "fixtures", "dcp"))


def fixtures_module():
    spec = importlib.util.spec_from_file_location("dcp_make_fixtures", os.path.join(FIXTURES, "make_fixtures.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ranks_of(folder):
    return {int(n[2:].split("_")[0]) for n in os.listdir(folder) if n.startswith("__") and n.endswith(".distcp")}


def kind_of(folder):
    if os.path.isdir(os.path.join(folder, "pytorch_model_fsdp_0")):
        return "accelerate", len(ranks_of(os.path.join(folder, "pytorch_model_fsdp_0")))
    from torch.distributed.checkpoint import FileSystemReader
    keys = FileSystemReader(folder).read_metadata().state_dict_metadata
    world = len(ranks_of(folder))
    if "train_state.step" in keys:
        return "torchtitan", world
    return ("fsdp2" if world > 1 else "single"), world


def flatten(obj, prefix=""):
    """{dotted key: value} of a nested dict/list, as DCP names its items."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list) and any(isinstance(v, (dict, list, torch.Tensor)) for v in obj):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = obj
    return out


def full(value):
    """A tensor at full size on every rank (DTensor.full_tensor() is a collective)."""
    from torch.distributed.tensor import DTensor
    if isinstance(value, DTensor):
        return value.full_tensor()
    return value


def load_folder(folder, kind, fx, rank, world):
    """dcp.load FOLDER into the structure make_fixtures.py saved; {key: tensor at full size or python value}."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict, get_state_dict
    model = fx.make_model(kind)
    if dist.is_initialized():
        from torch.distributed.fsdp import fully_shard
        for block in fx.blocks_of(model):
            fully_shard(block)
        fully_shard(model)
    opt = fx.make_optimizer(model)
    sched = fx.make_scheduler(opt)
    if kind in ("single", "fsdp2"):
        # get_state_dict gives a fresh optimizer its state (zero moments) so that dcp.load has tensors to fill.
        msd, osd = get_state_dict(model, opt)
        sd = {"model": msd, "optim": osd}
        dcp.load(sd, checkpoint_id=folder)
    elif kind == "torchtitan":
        osd = get_optimizer_state_dict(model, opt, options=StateDictOptions(flatten_optimizer_state_dict=True))
        sd = {"model": get_model_state_dict(model), "optimizer": osd, "lr_scheduler": sched.state_dict(),
              "dataloader": {f"dp_rank_{rank}": b"", "world_size": 0},
              "train_state": {"step": torch.tensor(0, dtype=torch.int32), "global_avg_losses": io.BytesIO(),
                              "global_max_losses": io.BytesIO(), "log_steps": io.BytesIO()}}
        dcp.load(sd, checkpoint_id=folder)
    else:
        msd, osd = get_state_dict(model, opt)
        sd = {"model": msd}
        dcp.load(sd, checkpoint_id=os.path.join(folder, "pytorch_model_fsdp_0"))
        od = {"optimizer": osd}
        dcp.load(od, checkpoint_id=os.path.join(folder, "optimizer_0"))
        sd.update(od)
    out = {}
    for k, v in flatten(sd).items():
        if isinstance(v, torch.Tensor):
            out[k] = full(v).detach().clone()
        elif isinstance(v, io.BytesIO):
            out[k] = ("BytesIO", v.getvalue())
        else:
            out[k] = v
    return out


def summary(t):
    v = t.reshape(-1).to(torch.float64)
    return float(v.sum()), [float(x) for x in v[:4]]


def layout_items(folders, key):
    """Every item of a reference layout; a later step lists only what differs from its first step."""
    layout = folders[key]["layout"]
    items = {}
    for sub_name, sub in ([(None, layout)] if "files" in layout else layout.items()):
        first = sub.get("items_not_listed_are_as_in")
        if first:
            base = folders[f"{key.split('/')[0]}/{first}"]["layout"]
            items.update((base if sub_name is None else base[sub_name])["items"])
        items.update(sub["items"])
    return items


def compare_reference(loaded, ref, items, problems):
    truth = ref["truth"]["tensors"]
    checked = 0
    for key, want in truth.items():
        got = loaded.get(key)
        if not isinstance(got, torch.Tensor):
            problems.append(f"{key}: missing from the loaded state")
            continue
        s, first = summary(got)
        if list(got.shape) != want["shape"] or first != want["first"][:len(first)] or \
                not math.isclose(s, want["sum"], rel_tol=1e-9, abs_tol=1e-12):
            problems.append(f"{key}: shape {list(got.shape)} sum {s!r} first {first} != reference "
                            f"{want['shape']} {want['sum']!r} {want['first']}")
        checked += 1
    for key, item in items.items():
        if item.get("kind") != "bytes" or "value" not in item:
            continue
        got, want = loaded.get(key), item["value"]
        if isinstance(got, tuple) and got and got[0] == "BytesIO":
            import hashlib
            got = {"BytesIO": len(got[1]), "md5": hashlib.md5(got[1]).hexdigest()}
        elif isinstance(got, bytes):
            import hashlib
            got = {"bytes": len(got), "md5": hashlib.md5(got).hexdigest()}
        elif isinstance(got, tuple):
            got = list(got)
        if json.loads(json.dumps(got)) != want:
            problems.append(f"{key}: {got!r} != reference {want!r}")
        checked += 1
    return checked


def compare_against(loaded, original, max_rel, problems):
    for key in sorted(set(loaded) | set(original)):
        a, b = original.get(key, "<missing>"), loaded.get(key, "<missing>")
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if a.shape != b.shape or a.dtype != b.dtype:
                problems.append(f"{key}: {b.dtype} {list(b.shape)} != original {a.dtype} {list(a.shape)}")
            elif not torch.equal(a, b):
                na = a.double().norm().item()
                rel = (a.double() - b.double()).norm().item() / na if na else math.inf
                if rel > max_rel:
                    problems.append(f"{key}: relative error {rel:.3g} > {max_rel}")
        elif not (isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor)) and a == b:
            continue
        elif not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            problems.append(f"{key}: {b!r:.80} != original {a!r:.80}")


def work(rank, world, port, args, kind, result_path):
    torch.set_num_threads(1)
    fx = fixtures_module()
    if world > 1 or kind in ("torchtitan",):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        loaded = load_folder(args.folder, kind, fx, rank, world)
        original = load_folder(args.against, kind, fx, rank, world) if args.against else None
    finally:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    if rank != 0:
        return
    problems, checked = [], 0
    ref_key = args.reference_key
    folder = os.path.abspath(args.folder)
    if ref_key is None and folder.startswith(FIXTURES + os.sep):
        ref_key = os.path.relpath(folder, FIXTURES)
    if ref_key:
        with open(args.reference or os.path.join(FIXTURES, "reference.json")) as f:
            folders = json.load(f)["folders"]
        if ref_key not in folders:
            problems.append(f"no reference for {ref_key}")
        else:
            checked += compare_reference(loaded, folders[ref_key], layout_items(folders, ref_key), problems)
    if original is not None:
        compare_against(loaded, original, args.max_rel_error, problems)
        checked += len(original)
    with open(result_path, "w") as f:
        json.dump({"kind": kind, "world": world, "items": len(loaded), "checked": checked, "problems": problems}, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--against", help="an original folder to compare with, item by item")
    ap.add_argument("--reference-key", help="the reference.json entry (e.g. fsdp2/step-4) for a folder outside the fixtures")
    ap.add_argument("--reference", help="reference.json (default: spec/fixtures/dcp/reference.json)")
    ap.add_argument("--max-rel-error", type=float, default=0.0, help="allowed ||a-b||/||a|| per tensor with --against (default 0: equal)")
    ap.add_argument("--world", type=int, help="processes to load with (default: the folder's number of ranks)")
    args = ap.parse_args()
    kind, world = kind_of(args.folder)
    world = args.world or world
    fd, result_path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        if world == 1 and kind != "torchtitan":
            work(0, 1, 0, args, kind, result_path)
        else:
            # torchtitan folders were written under fully_shard on a 1-rank mesh: load them the same way.
            fx = fixtures_module()
            mp.spawn(work, args=(world, fx.free_port(), args, kind, result_path), nprocs=world, join=True)
        with open(result_path) as f:
            result = json.load(f)
    finally:
        os.remove(result_path)
    for p in result["problems"]:
        print(f"MISMATCH {p}")
    status = "ok" if not result["problems"] else f"{len(result['problems'])} mismatches"
    print(f"{args.folder}: {result['kind']}, {result['world']} rank(s), {result['items']} items loaded, "
          f"{result['checked']} checked: {status}")
    sys.exit(0 if not result["problems"] else 1)


if __name__ == "__main__":
    main()
