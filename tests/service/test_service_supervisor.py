"""The supervisor on its own: tasks that die or return are logged and restarted; the
watchdog's `healthy()` turns false only when one cannot heal."""
from __future__ import annotations

import asyncio
import logging
import threading

from aftercalld.supervisor import Supervisor


def fast(**kw) -> Supervisor:
    return Supervisor(restart_min=0.01, restart_max=0.02, healthy_after=5.0, **kw)


async def test_a_task_that_dies_once_is_restarted_and_the_daemon_stays_healthy(caplog):
    runs: list[int] = []
    second_run = asyncio.Event()

    async def flaky() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise ValueError("Separator is not found, and chunk exceed the limit")
        second_run.set()
        await asyncio.Event().wait()

    sup = fast(give_up_after=3)
    sup.start("source main", flaky)
    await asyncio.wait_for(second_run.wait(), 5)
    assert sup.healthy()
    assert sup.status() == {"source main": 1}
    assert "task 'source main' stopped with an error" in caplog.text
    assert "ValueError: Separator is not found" in caplog.text  # the traceback is in the log
    await sup.stop()


async def test_a_task_that_returns_is_restarted_too(caplog):
    runs = 0
    third = asyncio.Event()

    async def returns() -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            third.set()
            await asyncio.Event().wait()

    sup = fast()
    sup.start("metrics", returns)
    await asyncio.wait_for(third.wait(), 5)
    assert "ended although it should run until stopped" in caplog.text
    await sup.stop()


async def test_healthy_turns_false_after_failures_in_a_row_and_says_why(caplog):
    dead = asyncio.Event()
    deaths = 0

    async def always() -> None:
        nonlocal deaths
        deaths += 1
        if deaths >= 3:
            dead.set()
        raise RuntimeError("bug")

    sup = fast(give_up_after=3)
    sup.start("dispatcher", always)
    assert sup.healthy()
    await asyncio.wait_for(dead.wait(), 5)
    await asyncio.sleep(0)  # the third failure is counted as the task ends
    caplog.set_level(logging.ERROR)
    assert not sup.healthy()
    assert "task 'dispatcher' failed 3 times in a row (last: RuntimeError: bug): it cannot heal itself" in caplog.text
    await sup.stop()


async def test_an_adopted_task_is_restarted_through_its_owner(caplog):
    started: list[asyncio.Task] = []
    running = asyncio.Event()

    async def loop_body() -> None:
        if len(started) == 1:
            raise KeyError("boom")
        running.set()
        await asyncio.Event().wait()

    def start() -> asyncio.Task:
        task = asyncio.create_task(loop_body())
        started.append(task)
        return task

    sup = fast()
    sup.adopt("the dispatcher", start(), start)
    await asyncio.wait_for(running.wait(), 5)
    assert len(started) == 2 and sup.healthy()
    assert "the dispatcher stopped with an error" in caplog.text
    await sup.stop()
    for task in started:
        task.cancel()


async def test_an_adopted_task_without_a_restart_and_a_dead_thread_make_it_unhealthy(caplog):
    async def dies() -> None:
        raise OSError("gone")

    sup = fast()
    task = asyncio.create_task(dies())
    sup.adopt("transport smpp session 1", task)
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert not sup.healthy()
    assert "transport smpp session 1 stopped with an error" in caplog.text

    other = fast()
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    other.watch("the metrics server thread", thread.is_alive)
    assert not other.healthy()
    assert "the metrics server thread is no longer running" in caplog.text
