"""A transformers TrainerCallback for excp.

On every checkpoint save it

1. writes ``optimizer_param_names.json`` into the checkpoint folder: the
   optimizer's parameter names in optimizer order (group by group, parameter
   by parameter), found by matching ``id(p)`` with ``model.named_parameters()``.
   ``excp`` reads that file when it is present, so it never has to guess which
   optimizer state belongs to which weight;
2. optionally (``chain_dir=...``) runs ``excp chain append CHAIN_DIR CHECKPOINT_DIR``
   in a background thread: one subprocess at a time, in save order, never
   blocking training; failures are logged, never raised;
3. optionally (``delete_after_verify=True``, off by default) deletes the raw
   checkpoint folder once the appended step passed ``excp verify``.

Usage::

    from excp_callback import ExcpCallback

    trainer = Trainer(..., callbacks=[ExcpCallback(chain_dir="run/excp-chain")])
    trainer.train()

The chain folder must exist already (``excp chain CHAIN_DIR first-checkpoint``
creates it; or pass ``create_chain=True`` and the first save creates it).
Only the main process (``state.is_world_process_zero``) writes anything.

Limits: the names are those of ``model.named_parameters()``; they match the
keys of ``model.safetensors`` for ordinary models (Llama, GPT-2, Qwen2, ...).
Where the optimizer holds flattened or sharded parameters that are not the
model's own (DeepSpeed ZeRO, FSDP with flat params), no name can be matched:
the callback then writes no file (and logs why), and excp falls back to
finding the mapping from the data. Do not combine ``delete_after_verify`` with
``load_best_model_at_end`` or with resuming from the raw folders.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import shlex
import shutil
import subprocess
import tempfile
import threading
from typing import Iterable, Sequence

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

NAMES_FILE = "optimizer_param_names.json"


def optimizer_param_names(model, optimizer) -> list[str] | None:
    """Parameter names in optimizer order, or None when a parameter is not one of the model's.

    A group may already carry its names: torch >= 2.6 records ``param_names``
    when the optimizer was built from ``model.named_parameters()``; those are
    used as they are.
    """
    by_id = {id(p): n for n, p in model.named_parameters(remove_duplicate=True)}
    names: list[str] = []
    for g, group in enumerate(optimizer.param_groups):
        if "param_names" in group and len(group["param_names"]) == len(group["params"]):
            names.extend(group["param_names"])
            continue
        for i, p in enumerate(group["params"]):
            name = by_id.get(id(p))
            if name is None:
                logger.warning("excp: optimizer param_groups[%d] params[%d] (shape %s) is not a parameter of the model; "
                               "no %s written", g, i, tuple(p.shape), NAMES_FILE)
                return None
            names.append(name)
    return names


def write_json_atomically(path: str, value) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


class ExcpCallback(TrainerCallback):
    """Write optimizer_param_names.json on each save; optionally append the checkpoint to an excp chain."""

    def __init__(
        self,
        chain_dir: str | None = None,
        excp_command: str | Sequence[str] = "npx excp",
        delete_after_verify: bool = False,
        create_chain: bool = False,
        chain_options: Iterable[str] = (),
        wait_on_train_end: bool = True,
    ):
        """
        chain_dir: an excp chain folder to append every checkpoint to; None writes the names file only.
        excp_command: how to run excp, a string split like a shell would, or an argv list (default "npx excp").
        delete_after_verify: remove the raw checkpoint folder once its chain step passed `excp verify`.
        create_chain: when chain_dir has no chain.json yet, the first checkpoint creates the chain
            (`excp chain CHAIN_DIR CKPT [chain_options]`) instead of being appended.
        chain_options: extra options for creating the chain, e.g. ["--keyframe-every", "10"].
        wait_on_train_end: at the end of training, wait until every queued append has finished.
        """
        self.chain_dir = chain_dir
        self.excp = shlex.split(excp_command) if isinstance(excp_command, str) else list(excp_command)
        self.delete_after_verify = delete_after_verify
        self.create_chain = create_chain
        self.chain_options = list(chain_options)
        self.wait_on_train_end = wait_on_train_end
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._worker: threading.Thread | None = None

    # ---- Trainer events ----

    def on_save(self, args, state, control, model=None, optimizer=None, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(folder):
            logger.warning("excp: checkpoint folder %s not found (hyper-parameter search run?); skipped", folder)
            return
        if model is not None and optimizer is not None:
            names = optimizer_param_names(model, optimizer)
            if names is not None:
                write_json_atomically(os.path.join(folder, NAMES_FILE), names)
        if self.chain_dir is not None:
            self._start_worker()
            self._queue.put(folder)

    def on_train_end(self, args, state, control, **kwargs):
        if self.wait_on_train_end and self._worker is not None:
            pending = self._queue.qsize()
            if pending:
                logger.info("excp: waiting for %d queued chain append(s)", pending)
            self.wait()

    # ---- background chain appends ----

    def wait(self) -> None:
        """Block until every queued checkpoint has been handled."""
        self._queue.join()

    def _start_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="excp-chain", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            folder = self._queue.get()
            try:
                self._append(folder)
            except Exception:  # a background helper: log, never raise into training
                logger.exception("excp: chain append of %s failed", folder)
            finally:
                self._queue.task_done()

    def _run(self, *argv: str) -> subprocess.CompletedProcess | None:
        cmd = [*self.excp, *argv]
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        except OSError as e:
            logger.error("excp: cannot run %s: %s", shlex.join(cmd), e)
            return None
        if done.returncode != 0:
            logger.error("excp: %s exited with %d: %s", shlex.join(cmd), done.returncode, done.stderr.strip())
            return None
        return done

    def _append(self, folder: str) -> None:
        chain = self.chain_dir
        assert chain is not None
        if not os.path.exists(os.path.join(chain, "chain.json")):
            if not self.create_chain:
                logger.error("excp: %s is not a chain (no chain.json); create it with `excp chain %s %s` "
                             "or pass create_chain=True", chain, chain, folder)
                return
            done = self._run("chain", "--quiet", *self.chain_options, chain, folder)
        else:
            done = self._run("chain", "append", "--quiet", chain, folder)
        if done is None:
            return
        logger.info("excp: appended %s to %s", folder, chain)
        if self.delete_after_verify and self._verify(folder):
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("excp: verified and removed %s", folder)

    def _verify(self, folder: str) -> bool:
        """`excp verify` of the step just appended for `folder` (a residual against its restored base)."""
        try:
            with open(os.path.join(self.chain_dir, "chain.json")) as f:
                steps = json.load(f)["steps"]
        except (OSError, ValueError, KeyError) as e:
            logger.error("excp: cannot read %s/chain.json: %s", self.chain_dir, e)
            return False
        step = steps[-1] if steps else None
        if step is None or step.get("source") != os.path.basename(os.path.normpath(folder)):
            logger.error("excp: the last chain step is not %s; not deleting it", folder)
            return False
        container = os.path.join(self.chain_dir, step["file"])
        if step["base"] is None:
            return self._run("verify", "--quiet", container) is not None
        # A residual decodes against the restored previous step: restore it to a temporary folder.
        # Next to the checkpoint (same disk as the run; not a name Trainer rotates or the chain owns).
        with tempfile.TemporaryDirectory(prefix="excp-verify-", dir=os.path.dirname(os.path.abspath(folder))) as tmp:
            base = os.path.join(tmp, "base")
            if self._run("chain", "restore", "--quiet", self.chain_dir, "--step", str(step["base"]), "-o", base) is None:
                return False
            return self._run("verify", "--quiet", container, "--base", base) is not None
