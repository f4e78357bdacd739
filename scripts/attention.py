"""Causal multi-head attention: first steps towards the FlashAttention shape.

The scale 1/sqrt(D) gets a name, queries are cut into blocks of 16, and
keys are walked in blocks of 16 when the scores of a query are computed.

The (query block, head) pairs cannot become the outer loops yet: the one
`scores` buffer is shared by every (h, i) iteration, so `loop.swap("attention
> for h")` is refuted at level 2 (two iterations write scores[0]), and so is
a parallel loop over h or i. The online-softmax rewrite of the LLM
transformations removes the buffer, which frees those loops."""
from optitrust_py.script import load
from transformations import loop, variable

load("../c_sources/attention.c", sizes={"H": 2, "S": 37, "D": 16})

variable.bind("attention > expr 'sqrtf(D)'", "scale")
loop.tile("attention > for i", 16, mode="min")
loop.tile("attention > for i > for j#1", 16, mode="min")
