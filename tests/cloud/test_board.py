import asyncio

from cloud.server.board import PromptBoard
from protocol.v1 import cdca_pb2


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def test_a_waiter_wakes_on_a_newer_prompt_and_times_out_otherwise():
    async def scenario():
        board = PromptBoard()
        waiter = asyncio.create_task(board.wait_newer("cam", 0, 5))
        await asyncio.sleep(0.01)
        await board.publish("other", cdca_pb2.Prompt(version=3))  # someone else's: keep waiting
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await board.publish("cam", cdca_pb2.Prompt(version=1))
        assert (await waiter).version == 1
        assert await board.wait_newer("cam", 1, 0.05) is None  # nothing newer: timeout

    run(scenario())


def test_close_releases_many_waiters_even_after_a_burst_of_cancellations():
    async def scenario():
        board = PromptBoard()
        waiters = [asyncio.create_task(board.wait_newer(f"cam-{i}", 0, 30)) for i in range(64)]
        await asyncio.sleep(0.01)
        for waiter in waiters[::2]:  # clients whose deadlines passed
            waiter.cancel()
        await asyncio.sleep(0.01)
        await board.close()
        results = await asyncio.gather(*waiters[1::2])
        assert results == [None] * 32
        assert board.closed

    run(scenario())
