"""Regenerate the demo chat datasets (deterministic): python data/demo/make_demo.py"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
ANIMALS = ["cat", "dog", "horse", "owl", "fox", "whale", "frog", "eagle", "bear", "mouse"]
HOMES = {"cat": "house", "dog": "kennel", "horse": "stable", "owl": "tree", "fox": "den", "whale": "ocean",
         "frog": "pond", "eagle": "nest", "bear": "cave", "mouse": "hole"}


def arithmetic(rng: random.Random) -> list[dict]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    op = rng.choice(["+", "-"])
    result = a + b if op == "+" else a - b
    turns = [{"role": "user", "content": f"What is {a} {op} {b}?"},
             {"role": "assistant", "content": f"{a} {op} {b} = {result}."}]
    if rng.random() < 0.3:
        c = rng.randint(1, 9)
        turns += [{"role": "user", "content": f"And times {c}?"},
                  {"role": "assistant", "content": f"{result} * {c} = {result * c}."}]
    return turns


def fact(rng: random.Random) -> list[dict]:
    animal, colour = rng.choice(ANIMALS), rng.choice(COLOURS)
    messages = [{"role": "system", "content": "You answer in one short sentence."}]
    if rng.random() < 0.5:
        messages += [{"role": "user", "content": f"Where does the {animal} live?"},
                     {"role": "assistant", "content": f"The {animal} lives in a {HOMES[animal]}."}]
    else:
        messages += [{"role": "user", "content": f"I saw a {colour} {animal}. What colour was it?"},
                     {"role": "assistant", "content": f"The {animal} was {colour}."}]
    return messages


def write(path: Path, make, count: int, seed: int, bare_every: int) -> None:
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(count):
            messages = make(rng)
            fh.write(json.dumps(messages if i % bare_every == 0 else {"messages": messages}) + "\n")


if __name__ == "__main__":
    write(HERE / "arithmetic.jsonl", arithmetic, 600, seed=1, bare_every=5)
    write(HERE / "facts.jsonl", fact, 300, seed=2, bare_every=7)
