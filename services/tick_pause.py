"""The dispatcher's wait between ticks: its poll interval at most, ended early by a
wakeup (a job submitted, a cancel requested: services.wakeups) or by one of its fold
tasks returning, so that the task's result is collected at once."""
from __future__ import annotations

import logging
import threading
import time

from services.cluster import Cluster
from services.wakeups import Wakeup

log = logging.getLogger(__name__)

# Ray's wait and the wakeup's cannot be waited on together: the pause waits on each in
# turn, this long: the longest a notification waits while folds run.
WAKE_SLICE_S = 0.05


class TickPause:
    def __init__(self, cluster: Cluster, wakeup: Wakeup, poll_interval_s: float):
        self.cluster, self.wakeup, self.poll_interval_s = cluster, wakeup, poll_interval_s
        self.ended_uncollected: set = set()  # the tasks that had ended at the last pause

    def wait(self, tasks: list, stop: threading.Event) -> None:
        """A task that has ended and is not collected yet ended after the tick looked: no
        wait, the next tick collects it. Unless it was so at the last pause too (the tick
        failed): then it is not waited on, which would not wait but spin; the poll tries
        it again."""
        deadline = time.monotonic() + self.poll_interval_s
        try:
            ended = set(self.cluster.ready(tasks)) if tasks else set()
            ended_before, self.ended_uncollected = self.ended_uncollected, ended
            if ended - ended_before:
                return
            running = [task for task in tasks if task not in ended]
            while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                step = min(left, WAKE_SLICE_S)
                if running and self.cluster.wait_any(running, step):
                    return
                if self.wakeup.wait(0 if running else step):
                    return
        except Exception as error:  # Ray failing: the next tick says so; wait as before wakeups
            log.debug("waiting on the fold tasks failed: %s", error)
            stop.wait(max(0.0, deadline - time.monotonic()))
