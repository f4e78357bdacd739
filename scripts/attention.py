"""Causal multi-head attention: first steps towards the FlashAttention shape.

The scale 1/sqrt(D) gets a name, queries are cut into blocks of 16 and the
(query block, head) pairs become the outer loops: the grid of independent
work items that a parallel or GPU version distributes. Keys are then walked
in blocks of 16 when the scores of a query are computed. The online-softmax
rewrite that removes the scores buffer comes with the LLM transformations."""
from optitrust_py.script import load
from transformations import loop, variable

load("../c_sources/attention.c", sizes={"H": 2, "S": 37, "D": 16})

variable.bind("attention > expr 'sqrtf(D)'", "scale")
loop.tile("attention > for i", 16, mode="min")
loop.swap("attention > for h")
loop.tile("attention > for i > for j#1", 16, mode="min")
