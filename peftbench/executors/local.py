"""This machine: one run at a time, or ``--jobs N`` runs at once, each in its own process with its
own share of the machine (``placement``); with N > 1 latency is timed alone (``lock``)."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait


def run_all(todo, out, options, timeout, progress, on_done):
    from ..sweep import execute_one

    if options.jobs == 1:
        for spec in todo:
            on_done(execute_one(spec, out, timeout, progress))
        return
    from .placement import slots

    free: queue.Queue = queue.Queue()
    for slot in slots(options.jobs, options.gpu):
        free.put({**slot, "lock": str(out / "records" / ".machine.lock")})
    # Set by the first run that ends in a Ctrl-C (or by this thread's own KeyboardInterrupt): a worker
    # thread picks its next spec the moment its run ends, before this thread can cancel what is queued,
    # and shutdown would then wait for that whole run. A spec picked after it starts nothing, and a run
    # started just before it (which never got the Ctrl-C) is sent one (sweep.execute_one's ``stop``).
    stopping = threading.Event()

    def one(spec):
        if stopping.is_set():
            return None
        placement = free.get()
        try:
            return execute_one({**spec, "placement": placement}, out, timeout, progress=False, stop=stopping)
        except KeyboardInterrupt:
            stopping.set()
            raise
        finally:
            free.put(placement)

    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=options.jobs) as pool:
        pending = {pool.submit(one, spec) for spec in todo}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    rec = future.result()  # a KeyboardInterrupt in a run ends the sweep here
                    if rec is not None:
                        with lock:
                            on_done(rec)
        except BaseException:
            stopping.set()
            for future in pending:
                future.cancel()
            raise
