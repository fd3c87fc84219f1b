"""How rank 0's step messages reach the parallel workers.

Every step of a tensor- or pipeline-parallel kiln.LLM starts with rank 0 telling the workers what
to run (the step's chunks: token ids, positions, block tables). At batch-1 decode the step is a
millisecond or two of GPU work, so the message's latency is on the critical path of every token:
the worker cannot launch its half of the step, and rank 0's first all-reduce waits for it.

`GlooChannel` broadcasts on the control group (torch.distributed, gloo): the transport for workers
on other machines (Ray). One broadcast of a fixed-size buffer carries a message up to `capacity`
bytes (a length header and the pickled message), so a message costs one gloo round trip instead
of `broadcast_object_list`'s two (its size, then its bytes); a larger one sends the rest in a
second broadcast. Measured on the 2 x H200 machine (2026-11-21), the two-broadcast form took about
1 ms per decode step of 2.7 ms at 1.1B TP=2: gloo's TCP transport wakes threads on both sides per
message.

`SharedMemoryChannel` is the same-host fast path for workers this process spawned, the way vLLM
hands its workers the scheduler's output through shared memory: one shared CPU buffer (a torch
tensor in shared memory, handed to the workers at spawn), a header with a sequence number, and
one acknowledgement slot per worker. Rank 0 waits until every worker acknowledged the previous
message, writes the new one (sequence number, pickled bytes, CRC32 over both), then publishes the
sequence number; a worker polls for it, copies the message, checks the embedded sequence number
and the CRC (so a reader on a weakly ordered CPU that sees the header before the bytes reads again
rather than a stale or torn message), acknowledges and unpickles. Messages larger than the buffer
go through the gloo group, announced in the shared buffer so the order is kept. Waiting spins
briefly, then yields, then sleeps with backoff, so an idle server does not burn a core; a worker
whose parent (rank 0) is gone, or a rank 0 whose workers stop acknowledging, raises instead of
waiting forever. torch.distributed stays the only transport between machines and of the model's
tensors; the shared buffer carries the step's host metadata only.

Both channels unpickle what rank 0 pickled: the peers are processes rank 0 started, never input
from elsewhere.
"""

from __future__ import annotations

import os
import pickle
import time
import zlib
from typing import Any, Callable

import torch
import torch.distributed as dist

CAPACITY = 64 << 10  # gloo: bytes one broadcast carries (a decode step's message is ~1 KiB)
SHM_CAPACITY = 4 << 20  # shared memory: message bytes (a batch-256 step's block tables fit)
_LINE = 64  # bytes per header slot: writer fields and each acknowledgement on their own cache line
_SPILL = -1  # header length meaning "this message comes through the gloo group"


class ChannelClosed(RuntimeError):
    """The other side of a step channel is gone (its process exited or stopped acknowledging)."""


class GlooChannel:
    """Step messages as broadcasts from rank 0 on a torch.distributed group (`group` None: the default group)."""

    def __init__(self, group: Any = None, capacity: int = CAPACITY):
        self.group = group
        self.capacity = capacity
        self._buf = torch.empty(capacity, dtype=torch.uint8)
        self._np = self._buf.numpy()

    def send(self, msg: Any) -> None:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        room = self.capacity - 8
        head = len(data).to_bytes(8, "little") + data[:room]
        self._np[:len(head)] = memoryview(head)
        dist.broadcast(self._buf, src=0, group=self.group)
        if len(data) > room:
            dist.broadcast(torch.frombuffer(bytearray(data[room:]), dtype=torch.uint8), src=0, group=self.group)

    def recv(self) -> Any:
        dist.broadcast(self._buf, src=0, group=self.group)
        n = int.from_bytes(self._np[:8].tobytes(), "little")
        room = self.capacity - 8
        data = self._np[8:8 + min(n, room)].tobytes()
        if n > room:
            rest = torch.empty(n - room, dtype=torch.uint8)
            dist.broadcast(rest, src=0, group=self.group)
            data += rest.numpy().tobytes()
        return pickle.loads(data)


def _wait(ready: Callable[[], bool], alive: Callable[[], str | None], timeout: float | None, what: str) -> None:
    """Until `ready()`: spin ~50 us, then yield the CPU for 20 ms, then sleep (0.1 ms growing to
    2 ms); every 0.2 s `alive()` may name why the peer is gone (raised as ChannelClosed), and past
    `timeout` seconds (None: no limit) the wait gives up."""
    if ready():
        return
    start = time.perf_counter()
    for _ in range(500):
        if ready():
            return
    nap, check = 1e-4, start + 0.2
    while not ready():
        now = time.perf_counter()
        if now >= check:
            why = alive()
            if why:
                raise ChannelClosed(f"{what}: {why}")
            if timeout is not None and now - start > timeout:
                raise ChannelClosed(f"{what}: nothing for {timeout:.0f} s")
            check = now + 0.2
        if now - start < 0.02:
            os.sched_yield()
        else:
            time.sleep(nap)
            nap = min(nap * 2, 2e-3)


class SharedMemoryChannel:
    """Step messages from rank 0 to the workers it spawned on this machine, through one shared buffer.

    Rank 0 builds it with `SharedMemoryChannel.create(world)` and hands `.buffer` to each worker
    (in the spawn arguments); worker r builds `SharedMemoryChannel(buffer, world, rank=r)`.
    `fallback` is the `GlooChannel` for messages larger than the buffer (set on every rank)."""

    def __init__(self, buffer: torch.Tensor, world: int, rank: int, fallback: GlooChannel | None = None,
                 alive: Callable[[], str | None] | None = None, timeout: float | None = None):
        """`alive()` names why the peer is gone, or returns None (default: rank 0 checks nothing;
        a worker checks its parent process); `timeout`: the most seconds rank 0 waits for the
        workers' acknowledgements (a worker waits for rank 0's next message without limit)."""
        if buffer.dtype != torch.uint8 or buffer.dim() != 1 or not buffer.is_shared():
            raise ValueError("a SharedMemoryChannel needs a 1-D uint8 tensor in shared memory (SharedMemoryChannel.create)")
        self.buffer, self.world, self.rank, self.fallback = buffer, world, rank, fallback
        words = buffer.numpy().view("<i8")
        self._header = words[: _LINE // 8]  # [seq, length, crc]
        self._acks = [words[(1 + r) * _LINE // 8: (1 + r) * _LINE // 8 + 1] for r in range(world)]
        self._payload = buffer.numpy()[(1 + world) * _LINE:]
        self.seq = 0  # a fresh buffer per group: every rank starts at message 0, however late it attaches
        parent = os.getppid()
        self.alive = alive or (lambda: None if rank == 0 or os.getppid() == parent else "rank 0 exited")
        self.timeout = timeout

    @staticmethod
    def create(world: int, capacity: int = SHM_CAPACITY) -> torch.Tensor:
        """A zeroed shared buffer for `world` ranks carrying messages of up to `capacity` bytes."""
        return torch.zeros((1 + world) * _LINE + 8 + capacity, dtype=torch.uint8).share_memory_()

    @property
    def capacity(self) -> int:
        return self._payload.shape[0] - 8

    def send(self, msg: Any) -> None:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        spill = len(data) > self.capacity
        prev = self.seq
        _wait(lambda: all(int(a[0]) == prev for a in self._acks[1:]), self.alive, self.timeout,
              "the workers stopped taking step messages")
        seq = prev + 1
        blob = seq.to_bytes(8, "little") + (b"" if spill else data)
        self._payload[:len(blob)] = memoryview(blob)
        self._header[2] = zlib.crc32(blob)
        self._header[1] = _SPILL if spill else len(data)
        self._header[0] = seq  # published last: a worker reads nothing before it sees this
        self.seq = seq
        if spill:
            if self.fallback is None:
                raise ValueError(f"a step message of {len(data)} bytes does not fit the {self.capacity}-byte shared buffer")
            self.fallback.send(msg)

    def recv(self) -> Any:
        seq = self.seq + 1
        _wait(lambda: int(self._header[0]) == seq, self.alive, None, f"rank {self.rank} waiting for a step message")
        while True:  # the header and the bytes may become visible in either order: check, else read again
            n, crc = int(self._header[1]), int(self._header[2])
            blob = self._payload[: 8 + max(n, 0)].tobytes()
            if int.from_bytes(blob[:8], "little") == seq and zlib.crc32(blob) & 0xFFFFFFFF == crc & 0xFFFFFFFF:
                break
        self._acks[self.rank][0] = seq
        self.seq = seq
        if n == _SPILL:
            if self.fallback is None:
                raise ChannelClosed("rank 0 sent a message larger than the shared buffer and there is no gloo fallback")
            return self.fallback.recv()
        return pickle.loads(blob[8:])
