"""``edgefleet worker``: the processes that run jobs from the task queue.

The control plane records jobs and enqueues them (:mod:`edgefleet.server.tasks`,
:mod:`edgefleet.server.queue`); a worker consumes the queue with Huey's consumer, claims each
attempt in the database, runs it with a context that renews the attempt's lease and streams
progress and log lines to the job's record (:mod:`edgefleet.worker.runner`), and records the
outcome. What each job kind does is in :mod:`edgefleet.worker.kinds` (the compiler's job for
``compile``). This package may import the control plane and the compiler; neither imports it.
"""
