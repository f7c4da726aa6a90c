"""job=inspect: what a model is made of (tree, parameter table, counts, module groups), without weights."""
