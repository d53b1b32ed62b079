"""NATS faults: nats-server restarted mid-stream, the relay's stream absent at start-up."""

import asyncio
import random
import re
from pathlib import Path

import pytest

from service.dev.publisher import ensure_publisher_stream
from tests.faults.support import (
    fault_stack,
    until,
)
from tests.faults.traffic import (
    STREAM,
    Publisher,
    event,
    expected,
    mixed_stream,
    valid,
)
from tests.integration_support import readyz

pytestmark = pytest.mark.faults


async def test_nats_restart_mid_stream_service_reconnects_and_resumes_with_exact_totals(
    tmp_path: Path,
) -> None:
    messages = mixed_stream(random.Random(2), 6_000, duplicate_share=0.02, poison_share=0.01)
    async with fault_stack(tmp_path) as stack:
        # Acks sent while the server goes down are lost; those events come back after
        # ACK_WAIT_S (kept short here so the scenario is quick) and are skipped by the key.
        service = await stack.start_service("service", ACK_WAIT_S="15")
        publisher = Publisher(stack.js)
        publishing = asyncio.create_task(publisher.publish(messages, rate=400))

        await until(lambda: stack.has_rows(800), within=60, what="rows being written")
        rows_before = await stack.row_count()
        await asyncio.to_thread(stack.nats.restart)

        async def written_after_restart() -> bool:
            return await stack.row_count() > rows_before + 500

        await until(written_after_restart, within=60, what="rows written after the restart")
        sequences = await publishing
        await stack.verify_exact(expected(messages, sequences), within=180)

        assert service.proc is not None
        assert service.proc.poll() is None, "reconnected in the same process"
        assert (await readyz(service) or (0, {}))[0] == 200
        assert publisher.retries > 0, "the restart really happened under the publisher"


async def test_absent_stream_is_awaited_with_retries_then_consumed_once_created(
    tmp_path: Path,
) -> None:
    messages = mixed_stream(random.Random(9), 500, duplicate_share=0.02, poison_share=0.02)
    async with fault_stack(tmp_path, create_stream=False) as stack:
        # DEBUG: every retry is logged, not only the first and every tenth.
        service = await stack.start_service("service", wait_ready=False, LOG_LEVEL="DEBUG")

        async def waiting_for_stream() -> bool:
            answer = await readyz(service)
            return (
                answer is not None
                and answer[0] == 503
                and "stream" in answer[1]["down"]
                and answer[1]["checks"]["database"] is True
            )

        await until(waiting_for_stream, within=60, what="/readyz 503 naming the stream")
        waits = re.compile(rf"cannot find stream {STREAM} yet")

        async def retried_twice() -> bool:
            return len(waits.findall(service.log())) >= 3  # the first try and two retries

        await until(retried_twice, within=60, what="two retries in the log")
        assert service.proc is not None
        assert service.proc.poll() is None, "waits rather than exits"
        assert (await readyz(service) or (0, {}))[0] == 503

        assert await ensure_publisher_stream(stack.nats.url, STREAM) is True
        sequences = await Publisher(stack.js).publish(messages)

        async def ready() -> bool:
            answer = await readyz(service)
            return answer is not None and answer[0] == 200

        await until(ready, within=90, what="/readyz 200 once the stream exists")
        await stack.verify_exact(expected(messages, sequences), within=90)
        done = re.search(rf"find stream {STREAM}: done after (\d+) retries", service.log())
        assert done is not None
        assert int(done.group(1)) >= 2


async def test_new_durable_over_a_large_backlog_starts_consuming_promptly(
    tmp_path: Path,
) -> None:
    rng = random.Random(11)
    messages = [valid(event(rng)) for _ in range(120_000)]
    async with fault_stack(tmp_path) as stack:
        await Publisher(stack.js).publish(messages)
        # A fetch that expired in ~20 ms never got the first message of a new durable over
        # such a backlog; BATCH_WAIT_MS is therefore at least 100 ms (250 by default).
        service = await stack.start_service("service")
        assert (await readyz(service) or (0, {}))[0] == 200
        # The service drains ~8-10k events/s here: 20 s would be most of the backlog.
        await until(lambda: stack.has_rows(1), within=20, what="the first row", status=stack.status)
