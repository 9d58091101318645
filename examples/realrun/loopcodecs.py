"""Codecs used in the loop. Each takes the original checkpoint (dict, see
common.py) and the base the run resumed from last time (None for the first
checkpoint when it is a keyframe) and returns (restored checkpoint, info).

  identity  write the checkpoint to safetensors and read it back (plumbing check)
  bf16      every float tensor through bf16 and back (the noise floor)
  excp      the excp command line: compress against the base, restore
  sim:NAME  a Python simulation of a candidate codec (sim.py)
"""
import os
import shutil

import torch

import common as C


class Identity:
    name = "identity"

    def file(self, ck, base, step, work):
        p = os.path.join(work, "ck-%d.safetensors" % step)
        C.save_ck(ck, p)
        raw = os.path.getsize(p)
        out = C.load_ck(p)
        os.remove(p)
        return out, {"raw_bytes": raw, "bytes": raw}


class BF16:
    name = "bf16"

    def file(self, ck, base, step, work):
        out = {n: {k: (t.to(torch.bfloat16).to(t.dtype) if t.is_floating_point() else t.clone()) for k, t in d.items()}
               for n, d in ck.items()}
        raw = C.ck_bytes(ck)
        return out, {"raw_bytes": raw, "bytes": C.ck_bytes({n: {k: t.to(torch.bfloat16) for k, t in d.items()} for n, d in ck.items()})}


class Excp:
    """The real excp CLI on single safetensors files (torch loop) or on
    Trainer checkpoint folders (trainer loop)."""
    name = "excp"

    def __init__(self, cmd, extra):
        self.cmd = cmd
        self.extra = extra

    def file(self, ck, base, step, work):
        src = os.path.join(work, "ck-%d.safetensors" % step)
        box = os.path.join(work, "ck-%d.excp" % step)
        dst = os.path.join(work, "ck-%d.restored.safetensors" % step)
        C.save_ck(ck, src)
        args = ["compress", src, "-o", box, "--force"] + self.extra
        bpath = None
        if base is not None:
            bpath = os.path.join(work, "base-%d.safetensors" % step)
            C.save_ck(base, bpath)
            args += ["--base", bpath]
        C.run_excp(self.cmd, args)
        rargs = ["restore", box, "-o", dst, "--force"] + (["--base", bpath] if bpath else [])
        C.run_excp(self.cmd, rargs)
        info = {"raw_bytes": os.path.getsize(src), "bytes": os.path.getsize(box)}
        out = C.load_ck(dst)
        for p in (src, box, dst, bpath):
            if p and os.path.exists(p):
                os.remove(p)
        return out, info

    def folder(self, src, base, dst, step, work, param_map):
        box = os.path.join(work, "ck-%d.excp" % step)
        args = ["compress", src, "-o", box, "--force", "--param-map", param_map] + self.extra
        if base is not None:
            args += ["--base", base]
        C.run_excp(self.cmd, args)
        if os.path.exists(dst):
            shutil.rmtree(dst)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        C.run_excp(self.cmd, ["restore", box, "-o", dst] + (["--base", base] if base else []))
        raw = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(src) for f in fs)
        info = {"raw_bytes": raw, "bytes": os.path.getsize(box)}
        os.remove(box)
        return info


def make_codec(spec, excp_cmd, extra, sim_args=None):
    if spec == "identity":
        return Identity()
    if spec == "bf16":
        return BF16()
    if spec == "excp":
        return Excp(excp_cmd, extra)
    if spec.startswith("sim:"):
        import sim
        return sim.make(spec[4:], sim_args or {})
    raise ValueError("unknown codec " + spec)
