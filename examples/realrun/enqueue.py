"""Append (or --front: prepend) a run.py cell to runs/queue.txt for worker.sh.
  python examples/realrun/enqueue.py NAME [--front] -- RUN.PY ARGS...
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
cmd = shlex.join(["/work/venv/bin/python", "examples/realrun/run.py"] + args + ["--out", "runs/res/%s.json" % name])
q = os.path.join(repo, "runs", "queue.txt")
with open(q + ".lock", "a") as lk:
    fcntl.flock(lk, fcntl.LOCK_EX)
    old = open(q).read() if os.path.exists(q) else ""
    line = "%s\t%s\n" % (name, cmd)
    with open(q + ".new", "w") as f:
        f.write(line + old if front else old + line)
    os.replace(q + ".new", q)
