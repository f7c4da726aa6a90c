"""Synthetic chat JSONL with realistic length spread (for throughput, not for learning)."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("the model data train token layer batch quantize weight scale cluster ray worker gradient "
         "loss step memory shard packed sequence attention vision text image caption").split()


def _text(rng: random.Random, chars: int) -> str:
    out, size = [], 0
    while size < chars:
        word = rng.choice(WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def write_chat_jsonl(path: Path, samples: int, seed: int = 0, min_chars: int = 300, max_chars: int = 3500) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for _ in range(samples):
            total = rng.randint(min_chars, max_chars)
            prompt = _text(rng, total // 4)
            answer = _text(rng, total - total // 4)
            fh.write(json.dumps({"messages": [{"role": "user", "content": prompt},
                                              {"role": "assistant", "content": answer}]}) + "\n")
    return path
