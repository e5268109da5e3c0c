"""Physical plans kept between runs of a query, in the form query workers take them."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class ShippedPlan:
    """A query's physical plan as bytes for a query worker, the rows per batch to run it
    with, and whether it only reads columns of tables (engine.read_cache.plain_read)."""

    plan: bytes
    batch_rows: int
    plain_read: bool


class KeptPlans:
    """Shipped plans by what makes a query's plan (`PlannedQuery.plan_key`): DataFusion's
    physical planning takes 3-10 ms per TPC-H query at SF 1, a lookup microseconds.
    Least recently used go first, past `max_plans` or `max_bytes` in all. Small plans
    only, since a plan over rows in memory (a pyiceberg read with delete files) carries
    those rows."""

    def __init__(self, max_plans: int = 256, max_plan_bytes: int = 1 << 20,
                 max_bytes: int = 32 << 20) -> None:
        self._max_plans = max_plans
        self._max_plan_bytes = max_plan_bytes
        self._max_bytes = max_bytes
        self._bytes = 0
        self._plans: OrderedDict[Hashable, ShippedPlan] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> ShippedPlan | None:
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
            return plan

    def keep(self, key: Hashable, plan: ShippedPlan) -> None:
        if len(plan.plan) > self._max_plan_bytes:
            return
        with self._lock:
            replaced = self._plans.pop(key, None)
            self._bytes += len(plan.plan) - (len(replaced.plan) if replaced else 0)
            self._plans[key] = plan
            while len(self._plans) > self._max_plans or self._bytes > self._max_bytes:
                self._bytes -= len(self._plans.popitem(last=False)[1].plan)
