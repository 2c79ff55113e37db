"""Per-tenant slots of the ingestion service: one tenant's work is bounded, another's
never waits for it (the wiring into the pipeline is exercised with real processes
in tests/integration/test_fairness.py)."""

import asyncio

import pytest
from prometheus_client import REGISTRY

from services.ingestion.fairness import TenantSlots


def waits() -> float:
    return REGISTRY.get_sample_value("rag_ingestion_tenant_waits_total") or 0.0


class Work:
    """Counts how many of each tenant's jobs run at once."""

    def __init__(self, slots: TenantSlots) -> None:
        self.slots = slots
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.done: list[str] = []

    async def job(self, tenant: str, seconds: float) -> None:
        async with self.slots.hold(tenant):
            self.running[tenant] = self.running.get(tenant, 0) + 1
            self.peak[tenant] = max(self.peak.get(tenant, 0), self.running[tenant])
            await asyncio.sleep(seconds)
            self.running[tenant] -= 1
        self.done.append(tenant)


async def test_a_tenant_runs_at_most_its_slots_and_others_do_not_wait() -> None:
    work = Work(TenantSlots(2))
    before = waits()
    flood = [asyncio.create_task(work.job("flooder", 0.05)) for _ in range(20)]
    await asyncio.sleep(0.01)  # the flooder's first two run, the other 18 queue
    await work.job("quiet", 0)
    assert work.done.index("quiet") <= 2, "the quiet job waited behind the flooder's queue"
    await asyncio.gather(*flood)
    assert work.peak == {"flooder": 2, "quiet": 1}
    assert waits() == before + 18  # every flooder job past its first two waited


async def test_zero_slots_means_no_cap() -> None:
    work = Work(TenantSlots(0))
    await asyncio.gather(*(work.job("bulk", 0.01) for _ in range(10)))
    assert work.peak == {"bulk": 10}


async def test_slots_are_released_on_failure_and_idle_tenants_are_forgotten() -> None:
    slots = TenantSlots(1)

    async def fail() -> None:
        async with slots.hold("t"):
            raise RuntimeError("parse failed")

    for _ in range(3):
        with pytest.raises(RuntimeError):
            await fail()
    async with slots.hold("t"):  # not stuck: the failures gave their slot back
        pass
    waiter = asyncio.create_task(Work(slots).job("t", 0))
    async with slots.hold("t"):
        await asyncio.sleep(0.01)
        waiter.cancel()  # a job cancelled while waiting leaves no trace
    await asyncio.gather(waiter, return_exceptions=True)
    assert slots._semaphores == {} and slots._holders == {}
