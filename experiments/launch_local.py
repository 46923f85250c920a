"""Runs a command as several JAX processes on this machine, as the hosts of a slice would.

  python -m experiments.launch_local --processes=2 --devices_per_process=2 -- \\
      python -m experiments.digits --workdir=runs/digits2x2 --config=digits:quick

Each process gets the coordinator's address on a free loopback port in
``JAX_COORDINATOR_ADDRESS`` (read by `jax.distributed.initialize` itself), the process count
and its id in ``MMCOMPRESS_NUM_PROCESSES`` and ``MMCOMPRESS_PROCESS_ID`` (read by
`mmcompress.train.parallel.maybe_initialize_distributed`, which then joins the job without
``--config.distributed``), ``--devices_per_process`` CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=D``) and ``JAX_PLATFORMS=cpu`` unless
the environment names the platforms. Every line a process prints is prefixed with ``[i]``,
on the stream it was printed on.

When a process fails, the others get ``--grace_s`` seconds to end on their own (a refused
config ends every process by itself) and are then killed; the launcher's exit status is the
first failing process's (128 + N for a process killed by signal N), 0 when all succeed. On a
real slice none of this is needed: ``--config.distributed=True``, in the platform's own
environment.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from experiments import launch as launch_lib

PROGRAM = "experiments.launch_local"
# What `mmcompress.train.parallel.maybe_initialize_distributed` reads (its NUM_PROCESSES_ENV
# and PROCESS_ID_ENV; named again here so that the launcher starts without importing jax).
NUM_PROCESSES_ENV = "MMCOMPRESS_NUM_PROCESSES"
PROCESS_ID_ENV = "MMCOMPRESS_PROCESS_ID"
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
  """A TCP port of the loopback interface that nothing listens on (the system's choice)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_environment(base: dict[str, str], port: int, processes: int, process_id: int,
                        devices: int) -> dict[str, str]:
  """`base` with what process `process_id` of a local launch reads (module docstring)."""
  flags = [f for f in base.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_COUNT_FLAG)]
  env = dict(base, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
             XLA_FLAGS=" ".join(flags + [f"{_DEVICE_COUNT_FLAG}={devices}"]))
  env[NUM_PROCESSES_ENV] = str(processes)
  env[PROCESS_ID_ENV] = str(process_id)
  env.setdefault("JAX_PLATFORMS", "cpu")
  return env


def exit_status(returncode: int) -> int:
  """A child's return code as a shell reports it (killed by signal N: 128 + N)."""
  return 128 - returncode if returncode < 0 else returncode


def _stream(process_id: int, source, target, lock: threading.Lock) -> None:
  """Copies the lines of `source` to `target`, each prefixed with ``[process_id]``."""
  for line in source:
    text = line.rstrip("\n")
    with lock:
      target.write(f"[{process_id}] {text}\n")
      target.flush()
  source.close()


def _kill(processes: Sequence[subprocess.Popen], sig: int) -> None:
  for process in processes:
    if process.poll() is None:
      process.send_signal(sig)


def launch(command: Sequence[str], processes: int, devices_per_process: int,
           grace_s: float) -> int:
  """Runs `command` as `processes` processes; returns the exit status (module docstring)."""
  port = free_port()
  lock = threading.Lock()
  children, threads = [], []
  for i in range(processes):
    child = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, errors="replace",
                             env=process_environment(dict(os.environ), port, processes, i,
                                                     devices_per_process))
    children.append(child)
    for source, target in ((child.stdout, sys.stdout), (child.stderr, sys.stderr)):
      threads.append(threading.Thread(target=_stream, args=(i, source, target, lock),
                                      daemon=True))
      threads[-1].start()
  with lock:
    print(f"{PROGRAM}: {processes} processes (pids {' '.join(str(c.pid) for c in children)}), "
          f"coordinator 127.0.0.1:{port}", file=sys.stderr, flush=True)

  def forward(signum, frame):  # the launcher's own SIGTERM or SIGINT ends every process
    del frame
    _kill(children, signum)
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, forward)

  failed, deadline, ended = None, None, set()
  while len(ended) < len(children):
    for i, child in enumerate(children):
      code = child.poll()
      if code is None or i in ended:
        continue
      ended.add(i)
      with lock:
        print(f"{PROGRAM}: process {i} exited with status {exit_status(code)}",
              file=sys.stderr, flush=True)
      if code != 0 and failed is None:
        failed, deadline = exit_status(code), time.monotonic() + grace_s
    if deadline is not None and time.monotonic() >= deadline:
      _kill(children, signal.SIGKILL)
    time.sleep(0.05)
  for thread in threads:
    thread.join()
  return failed or 0


def main(argv: Sequence[str]) -> int:
  parser = launch_lib.ArgumentParser(
      prog=PROGRAM, description="Runs COMMAND as several JAX processes on this machine.",
      usage=f"python -m {PROGRAM} [--processes=N] [--devices_per_process=D] "
            "[--grace_s=S] -- COMMAND...")
  parser.add_argument("--processes", type=int, default=2, help="how many processes")
  parser.add_argument("--devices_per_process", type=int, default=1,
                      help="CPU devices of each process")
  parser.add_argument("--grace_s", type=float, default=10.0,
                      help="seconds the others get to end on their own after one fails")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("no command: give it after --, e.g. -- python -m experiments.digits ...")
  if args.processes < 1 or args.devices_per_process < 1:
    parser.error("--processes and --devices_per_process must be >= 1")
  if args.grace_s < 0:
    parser.error("--grace_s must be >= 0")
  if shutil.which(command[0]) is None:
    parser.error(f"no such command {command[0]!r} (not a file nor on PATH): give the command "
                 "after --, e.g. -- python -m experiments.digits ...")
  return launch(command, args.processes, args.devices_per_process, args.grace_s)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
