"""Causal multi-head attention: towards the FlashAttention shape."""
from optitrust_py.script import load
from transformations import flash, variable

load("../c_sources/attention.c", sizes={"H": 2, "S": 37, "D": 16})

variable.bind("attention > expr 'sqrtf(D)'", "scale")
flash.online_softmax("attention > for i", 16)
