"""Keeps TorchServe from outliving the run that started it, even when that run is SIGKILLed.

Started by ``process.start_server`` as the leader of a new session, with its stdin the read
end of a pipe whose write end only the run holds. It starts TorchServe as its own child, in
its own process group, and waits. When the run ends in any way, including SIGKILL, the
pipe reaches end-of-file and the guardian stops the whole group: SIGTERM, a grace period,
then SIGKILL. (TorchServe starts Java and the workers in the guardian's group, so a
parent-death signal on one process alone would not reach them.)

    python -m pipeline.torchserve.guardian GRACE_S LOG_FILE -- COMMAND...
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import psutil


def _others() -> list[psutil.Process]:
    me, group = os.getpid(), os.getpgrp()
    out = []
    for p in psutil.process_iter():
        try:
            if p.pid != me and os.getpgid(p.pid) == group and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.Error, OSError):
            continue
    return out


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def stop_others(grace_s: float) -> None:
    """SIGTERM every other process of this group, then SIGKILL what is left after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        procs = _others()
        if not procs:
            return
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            _reap()
            if not _others():
                return
            time.sleep(0.1)


def main(argv: list[str]) -> int:
    grace_s, log_file, sep, *cmd = argv
    if sep != "--" or not cmd:
        sys.stderr.write(__doc__)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: (stop_others(float(grace_s)), os._exit(143)))
    with open(log_file, "ab") as out:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 0.5)
        if ready and not os.read(sys.stdin.fileno(), 1024):
            stop_others(float(grace_s))  # the run is gone: take everything down with it
            return 0
        code = child.poll()
        if code is not None:
            stop_others(2.0)  # TorchServe's launcher ended: its workers must not linger
            return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
