"""Append (or --front: prepend, --after=NAME: insert after NAME) a run.py
cell to runs/queue.txt for worker.sh.
  python examples/realrun/enqueue.py NAME [--front|--after=OTHER] -- RUN.PY ARGS...
The result goes to runs/res/NAME.json."""
import fcntl
import os
import shlex
import sys

repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
argv = sys.argv[1:]
sep = argv.index("--")
opts, args = argv[:sep], argv[sep + 1:]
name = opts[0]
front = "--front" in opts
cmd = shlex.join([sys.executable, "examples/realrun/run.py"] + args + ["--out", "runs/res/%s.json" % name])
q = os.path.join(repo, "runs", "queue.txt")
with open(q + ".lock", "a") as lk:
    fcntl.flock(lk, fcntl.LOCK_EX)
    old = open(q).read() if os.path.exists(q) else ""
    line = "%s\t%s\n" % (name, cmd)
    after = [o[8:] for o in opts if o.startswith("--after=")]
    lines = old.splitlines(True)
    if after:
        at = [i for i, l in enumerate(lines) if l.startswith(after[0] + "\t")]
        lines.insert(at[0] + 1 if at else len(lines), line)
    elif front:
        lines.insert(0, line)
    else:
        lines.append(line)
    with open(q + ".new", "w") as f:
        f.write("".join(lines))
    os.replace(q + ".new", q)
