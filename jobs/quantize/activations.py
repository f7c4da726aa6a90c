"""A worker's calibration batches (hidden states entering the current block).

On a GPU with offload they live in pinned host memory and stream to the device one batch ahead on a side
stream, so the copies overlap the block's compute and GPU memory holds about two batches instead of the
whole shard twice (inputs and FP outputs: 1 GiB for 128 x 512 tokens of a 4096-wide model). Otherwise
they stay on their device. Either way the algorithms see a re-iterable sequence of device tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch


class Activations(Sequence[torch.Tensor]):
    def __init__(self, device: torch.device, offload: bool, batches: Iterable[torch.Tensor] = ()) -> None:
        self.device = device
        self.offload = offload and device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if self.offload else None
        self._items: list[torch.Tensor] = []
        for x in batches:
            self.append(x)

    def append(self, x: torch.Tensor) -> None:
        if not self.offload:
            self._items.append(x.to(self.device))
            return
        if not x.is_cuda:
            self._items.append(x.pin_memory())
            return
        host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        self._stream.wait_stream(torch.cuda.current_stream(self.device))  # x is computed
        with torch.cuda.stream(self._stream):
            host.copy_(x, non_blocking=True)
        x.record_stream(self._stream)  # its memory is not reused before the copy ends
        self._items.append(host)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> torch.Tensor:  # type: ignore[override]
        if not self.offload:
            return self._items[index]
        tensor, event = self._load(index)
        torch.cuda.current_stream(self.device).wait_event(event)
        return tensor

    def __iter__(self) -> Iterator[torch.Tensor]:
        if not self.offload:
            yield from self._items
            return
        current = torch.cuda.current_stream(self.device)
        ahead = self._load(0) if self._items else None
        for i in range(len(self._items)):
            tensor, event = ahead
            current.wait_event(event)
            tensor.record_stream(current)  # allocated on the side stream, used on this one
            ahead = self._load(i + 1) if i + 1 < len(self._items) else None
            yield tensor

    def _load(self, index: int) -> tuple[torch.Tensor, torch.cuda.Event]:
        with torch.cuda.stream(self._stream):
            tensor = self._items[index].to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        return tensor, event

    def host(self) -> list[torch.Tensor]:
        """The batches in host memory (for checkpoints), after every pending copy has landed."""
        if self.offload:
            self._stream.synchronize()
            return list(self._items)
        return [x.cpu() for x in self._items]

    @property
    def rows(self) -> int:
        return sum(x.shape[0] for x in self._items)

    @property
    def numel(self) -> int:
        return sum(x.numel() for x in self._items)
