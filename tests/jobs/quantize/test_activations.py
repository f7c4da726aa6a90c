"""Calibration activations: a plain sequence on the CPU; on a GPU, offloaded to pinned host memory and
streamed back one batch ahead (the CUDA tests run on the GPU machine)."""

from __future__ import annotations

import pytest
import torch

from jobs.quantize.activations import Activations

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="offloading streams to a CUDA device")


def _batches(n: int, device: str = "cpu") -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(n)
    return [torch.randn(2, 8, 16, generator=gen).to(device) for _ in range(n)]


def test_cpu_store_is_a_sequence_of_its_batches() -> None:
    batches = _batches(3)
    store = Activations(torch.device("cpu"), offload=True, batches=batches)  # offload needs CUDA: ignored
    assert not store.offload and len(store) == 3 and store.rows == 6 and store.numel == 3 * 2 * 8 * 16
    assert all(torch.equal(a, b) for a, b in zip(store, batches, strict=True))
    assert torch.equal(store[1], batches[1])
    assert all(torch.equal(a, b) for a, b in zip(store.host(), batches, strict=True))


@cuda
def test_offloaded_store_streams_the_same_values_and_holds_little_gpu_memory() -> None:
    device = torch.device("cuda")
    batches = [torch.randn(8, 512, 1024, device=device, dtype=torch.bfloat16) for _ in range(16)]  # 8 MiB each
    expected = [b.cpu() for b in batches]
    store = Activations(device, offload=True)
    for b in batches:
        store.append(b * 1)  # computed on the device, as a block's outputs are
    del batches
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):  # re-iterable
        for got, want in zip(store, expected, strict=True):
            assert torch.equal((got * 1).cpu(), want)
    batch_bytes = expected[0].numel() * 2
    assert torch.cuda.max_memory_allocated(device) - base <= 4 * batch_bytes  # not the 16 batches
    assert all(torch.equal(a, b) for a, b in zip(store.host(), expected, strict=True))
    assert torch.equal(store[5].cpu(), expected[5])
