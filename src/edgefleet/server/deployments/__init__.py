"""Edge deployment plans and their state machine.

A plan pins model versions to handles and rolls them out in up to ten stages (``plans``). Starting a
stage selects its devices (percentage of the fleet, explicit names, name substring or tags; a device
is in at most one stage of a plan) and gives each a per-device row (``stages``), whose rules are the
pure :func:`edgefleet.server.deployments.rollout.transition`, applied to what devices report
(``device_side``); the shared records are in ``records``.

The stage status follows from its devices: ``STARTING`` (nobody fetched yet), ``INPROGRESS``,
``DEPLOYED`` (all finished, failed share within the threshold), ``FAILED`` (failed share above the
threshold, decided as soon as it is exceeded), ``STOPPING`` -> ``STOPPED``. A stage can start when
every earlier stage is ``DEPLOYED``; a ``STOPPED`` stage can be started again.

Concurrency: every transition locks the stage row first, then touches device rows, so replicas and
concurrent device reports serialise per stage and the derived stage status is never computed from a
stale count.
"""
