"""CircuitReconciler: exclude the backends whose circuit is open on this router node.

The node's breakers (nexus/router_node/breaker.py) hand each decision a view: open circuits, each with its
reason (failures in a row, an upstream 429 cooldown, the health worker's verdict) and the time to its next
trial. An open backend is excluded with that reason, so a dead only candidate is a fast 503 with
Retry-After, never an upstream attempt. Backends whose trial is due are not excluded: they are demoted (the
scheduler tries them last), and the attempt that starts first takes the trial. Pure: the view is an input.
"""

from __future__ import annotations

from nexus.core.pipeline.intent import RoutingIntent
from nexus.core.snapshot import Snapshot

__all__ = ["NAME", "reconcile"]

NAME = "CircuitReconciler"


def reconcile(intent: RoutingIntent, snapshot: Snapshot) -> None:
    circuits = intent.circuits_open
    if not circuits:
        return
    out = [b for b in intent.candidates if b.name in circuits]
    if out:
        intent.exclude_each(
            (
                (b, circuits[b.name][0],
                 f"wait: this replica tries {b.name} again by itself; if it stays down, check backend {b.name}")
                for b in out
            ),
            NAME,
        )
