"""Regenerate the demo text corpus (deterministic, no downloads): python data/text/make_text.py

Templated English about objects, colours, animals and arithmetic: enough structure that a tiny model
learns something and quantization error shows up in perplexity. train.txt calibrates (and can train),
heldout.txt is only for evaluation (other seed, so other sentences).
"""

import random
from pathlib import Path

HERE = Path(__file__).parent
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "grey", "brown"]
OBJECTS = ["ball", "cup", "box", "chair", "lamp", "book", "kite", "hat", "boat", "car", "door", "key"]
ANIMALS = {"cat": "house", "dog": "kennel", "horse": "stable", "owl": "tree", "fox": "den", "whale": "ocean",
           "frog": "pond", "eagle": "nest", "bear": "cave", "mouse": "hole"}
PLACES = ["kitchen", "garden", "library", "market", "school", "harbour", "forest", "station"]
NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivo", "June"]


def colour_line(r: random.Random) -> str:
    name, obj, colour, place = r.choice(NAMES), r.choice(OBJECTS), r.choice(COLOURS), r.choice(PLACES)
    return f"{name} found a {colour} {obj} in the {place}, so the {obj} in the {place} is {colour}."


def animal_line(r: random.Random) -> str:
    animal = r.choice(sorted(ANIMALS))
    colour = r.choice(COLOURS)
    return f"The {colour} {animal} lives in a {ANIMALS[animal]}, and every {animal} goes home to its {ANIMALS[animal]}."


def arithmetic_line(r: random.Random) -> str:
    a, b = r.randint(0, 50), r.randint(0, 50)
    if r.random() < 0.5:
        return f"{r.choice(NAMES)} had {a} apples and got {b} more, so now there are {a + b} apples."
    return f"{a} plus {b} is {a + b}, and {a + b} minus {b} is {a}."


def counting_line(r: random.Random) -> str:
    start = r.randint(1, 20)
    numbers = ", ".join(str(start + i) for i in range(5))
    return f"Counting up from {start}: {numbers}. The next number is {start + 5}."


MAKERS = [colour_line, animal_line, arithmetic_line, counting_line]


def write(path: Path, lines: int, seed: int) -> None:
    r = random.Random(seed)
    path.write_text("".join(r.choice(MAKERS)(r) + "\n" for _ in range(lines)))


if __name__ == "__main__":
    write(HERE / "train.txt", 1200, seed=11)
    write(HERE / "heldout.txt", 300, seed=12)
