"""The transfer benchmark's parts (``bench/transfer.py`` and ``bench/soak.py`` are its entry points).

- :mod:`kbbench.flows`: what one transfer is (the variants, the workload's keys, the /kbs/v1 and
  /kbs/v0 request sequences, and the framework floor's same-shaped requests);
- :mod:`kbbench.servers`: the servers under test (``keybroker serve`` from a :class:`ServerSpec`, the
  framework floor app, the essential-work app), started and stopped through ``tests/helpers`` as the test suite does, and the
  set-up through the admin API;
- :mod:`kbbench.cpu`: CPU accounting from ``/proc`` (a server's process group, its event-loop
  threads, run-queue waits, the machine) and the server's per-stage CPU (``keybroker.stages``);
- :mod:`kbbench.crypto`: the server-side cryptography alone;
- :mod:`kbbench.profile`: py-spy sampling of the server, bucketed;
- :mod:`kbbench.driver`: client processes, one level, the whole run;
- :mod:`kbbench.report`: the targets, the scaling model (Little's law) and the printed report.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: The repository: ``tests.helpers`` (the servers' process handling) is imported from here.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
