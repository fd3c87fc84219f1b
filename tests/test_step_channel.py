"""runtime/step_channel: rank 0's step messages reach every worker whole and in order, through
the shared buffer (messages larger than it through the gloo group, in the same order) or through
gloo alone; a side whose peer is gone raises instead of waiting."""

from __future__ import annotations

import datetime
import random
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kiln.runtime.distributed import free_port
from kiln.runtime.step_channel import ChannelClosed, GlooChannel, SharedMemoryChannel

from conftest import collect_ranks, stop_ranks

WAIT_S = 90.0


def _messages(seed: int) -> list:
    """Small and large (past the test's 4 KiB shared buffer and 1 KiB gloo buffer) messages, mixed."""
    rng = random.Random(seed)
    out: list = []
    for i in range(40):
        size = rng.choice([0, 3, 50, 300, 2000, 9000])
        out.append(("exec", i, [rng.randrange(1 << 30) for _ in range(size)]))
    return out + [("stop",)]


def _rank_main(rank: int, world: int, port: int, kind: str, buffer: torch.Tensor | None, results: mp.Queue) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
        gloo = GlooChannel(capacity=1024)
        channel = gloo if kind == "gloo" else SharedMemoryChannel(buffer, world, rank, fallback=gloo, timeout=30)
        sent = _messages(7)
        if rank == 0:
            for msg in sent:
                channel.send(msg)
            got = sent
        else:
            got = []
            while not got or got[-1] != ("stop",):
                got.append(channel.recv())
        dist.destroy_process_group()
        results.put((rank, "ok", got == sent))
    except Exception:  # noqa: BLE001 - reported to the test
        results.put((rank, "error", traceback.format_exc()))


@pytest.mark.parametrize("kind", ["shm", "gloo"])
def test_every_worker_gets_every_message_whole_and_in_order(kind: str) -> None:
    world = 3
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    buffer = SharedMemoryChannel.create(world, capacity=4096) if kind == "shm" else None
    port = free_port("127.0.0.1")
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, kind, buffer, results), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    try:
        got = collect_ranks(procs, results, WAIT_S)
    finally:
        stop_ranks(procs, grace_s=10)
    assert got == {0: True, 1: True, 2: True}


def test_shared_buffer_round_trip_in_one_process() -> None:
    """Writer and reader views of one buffer (no processes): the reader sees each message once, in
    order, and the writer waits for its acknowledgement before the next."""
    buffer = SharedMemoryChannel.create(2, capacity=256)
    writer = SharedMemoryChannel(buffer, 2, 0, timeout=0.5)
    reader = SharedMemoryChannel(buffer, 2, 1, alive=lambda: None)
    for msg in [("exec", [1, 2, 3]), 17, {"a": b"x" * 200}]:
        writer.send(msg)
        assert reader.recv() == msg
    writer.send("one")
    with pytest.raises(ChannelClosed, match="nothing for"):  # the reader has not taken "one"
        writer.send("two")
    with pytest.raises(ValueError, match="does not fit"):  # no gloo fallback for a message this large
        SharedMemoryChannel(SharedMemoryChannel.create(2, capacity=64), 2, 0).send(b"x" * 100)


def test_a_reader_whose_writer_is_gone_raises() -> None:
    buffer = SharedMemoryChannel.create(2, capacity=64)
    reader = SharedMemoryChannel(buffer, 2, 1, alive=lambda: "rank 0 exited")
    with pytest.raises(ChannelClosed, match="rank 0 exited"):
        reader.recv()


def test_a_writer_whose_worker_died_names_it() -> None:
    buffer = SharedMemoryChannel.create(3, capacity=64)
    writer = SharedMemoryChannel(buffer, 3, 0, alive=lambda: "worker rank(s) 2 (exit code -9) stopped", timeout=60)
    writer.send("first")  # nobody acknowledged it: the next send waits, sees the dead worker, raises
    with pytest.raises(ChannelClosed, match="rank\\(s\\) 2"):
        writer.send("second")


def test_a_torn_message_is_read_again_not_taken() -> None:
    """A reader that sees the new sequence number before the bytes (weakly ordered CPUs) must not
    take stale bytes: the embedded sequence number and the CRC send it back to read again."""
    buffer = SharedMemoryChannel.create(2, capacity=128)
    writer = SharedMemoryChannel(buffer, 2, 0)
    reader = SharedMemoryChannel(buffer, 2, 1, alive=lambda: None)
    writer.send("fresh")
    header = buffer.numpy().view("<i8")
    good = buffer.clone()
    buffer[(1 + 2) * 64 + 8] ^= 0xFF  # corrupt one payload byte
    reads = []

    def heal_later() -> None:  # the late store becoming visible, as the reader polls
        reads.append(1)
        if len(reads) == 6:
            buffer.copy_(good)

    reader._header = _Watched(header, heal_later)
    assert reader.recv() == "fresh" and len(reads) > 6  # read the torn bytes, then again until whole


class _Watched:
    """A header view whose reads run a hook (to change the buffer while the reader polls it)."""

    def __init__(self, header, hook) -> None:  # noqa: ANN001
        self.header, self.hook = header, hook

    def __getitem__(self, i: int) -> int:
        self.hook()
        return self.header[i]


def test_the_channel_needs_a_shared_buffer() -> None:
    with pytest.raises(ValueError, match="shared memory"):
        SharedMemoryChannel(torch.zeros(1024, dtype=torch.uint8), 2, 0)


def test_workers_spawned_by_kiln_llm_use_the_shared_buffer_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """KILN_STEP_CHANNEL=shm on CPU: the whole tensor-parallel engine runs over the shared buffer
    (on GPUs it is the default) and gives the single-process greedy tokens."""
    import kiln
    from kiln import debug

    monkeypatch.setattr(debug, "STEP_CHANNEL", "shm")
    greedy = kiln.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    prompts = ["The fox and the crow", "In the beginning"]
    want = [o.outputs[0].token_ids for o in kiln.LLM("tiny-llama").generate(prompts, greedy)]
    with kiln.LLM("tiny-llama", tensor_parallel_size=2) as llm:
        assert isinstance(llm._tp.channel, SharedMemoryChannel)
        got = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy)]
    assert got == want


def test_an_unknown_channel_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import kiln
    from kiln import debug

    monkeypatch.setattr(debug, "STEP_CHANNEL", "pigeon")
    with pytest.raises(ValueError, match="KILN_STEP_CHANNEL"):
        kiln.LLM("tiny-llama", tensor_parallel_size=2)
    assert not dist.is_initialized()


def test_an_idle_group_sends_keepalives_between_steps_only() -> None:
    """A worker waiting on gloo gives up after the group's timeout, so an idle rank 0 sends a no-op
    every timeout / 4 — never while a step holds `busy` (on CPU the step's collectives share the
    group, and every rank must issue them in the same order)."""
    import threading
    import time

    from kiln.runtime.tp import TPGroup

    sent: list = []

    class Recorder:
        def send(self, msg: object) -> None:
            sent.append((time.monotonic(), msg))

    class Alive:
        def dead(self) -> list:
            return []

    group = object.__new__(TPGroup)
    group.busy, group.closed, group._last_send = threading.RLock(), False, time.monotonic()
    group._stop_keepalive, group.channel, group.launcher = threading.Event(), Recorder(), Alive()
    thread = threading.Thread(target=group._keepalive, args=(0.2,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not sent and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sent and sent[0][1] == ("noop",)
        with group.busy:  # a long step: no keep-alive inside it
            t0 = time.monotonic()
            time.sleep(0.6)
            t1 = time.monotonic()
        assert not [t for t, _ in sent if t0 <= t <= t1]
        time.sleep(0.5)
        assert [t for t, _ in sent if t > t1]  # idle again: they resume
    finally:
        group.closed = True
        group._stop_keepalive.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_worker_skips_keepalives_wherever_they_come() -> None:
    """Keep-alive no-ops may arrive before any step message, the start-up pool size included
    (rank 0 compiling for longer than a keep-alive period): the worker takes the next real one."""
    from kiln.runtime.tp import _next_message

    class Queue:
        def __init__(self, msgs: list) -> None:
            self.msgs = msgs

        def recv(self) -> tuple:
            return self.msgs.pop(0)

    q = Queue([("noop",), ("noop",), ("blocks", 12), ("noop",), ("exec", []), ("stop",)])
    assert [_next_message(q) for _ in range(3)] == [("blocks", 12), ("exec", []), ("stop",)]
