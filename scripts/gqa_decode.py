from optitrust_py.script import bench, load
from transformations import arith, llm, loop, matrix, parallel, variable, vector

load("../c_sources/gqa_decode.c", sizes={"H": 8, "KVH": 2, "D": 20, "SMAX": 40, "pos": 33})

variable.bind("gqa_decode > expr 'H / KVH'", "G")
loop.move_out("gqa_decode > for h > def G")
llm.tile_groups("gqa_decode > for h", "G", "kv", "r")
arith.simplify("gqa_decode > for kv > def g")
variable.inline("gqa_decode > for kv > def g")
llm.expand_buffer("gqa_decode > for kv > for r", "scores", "pos + 1")
loop.fission("gqa_decode > for kv > for r > after for t#1")
loop.swap("gqa_decode > for kv > for r#1")
loop.fission("gqa_decode > for kv > for r#2 > before for t#4")
loop.swap("gqa_decode > for kv > for r#3")
