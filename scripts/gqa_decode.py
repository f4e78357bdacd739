from optitrust_py.script import bench, load
from transformations import arith, llm, loop, matrix, parallel, variable, vector

load("../c_sources/gqa_decode.c", sizes={"H": 8, "KVH": 2, "D": 20, "SMAX": 40, "pos": 33})
bench("gqa_decode", sizes={"H": 32, "KVH": 8, "D": 128, "SMAX": 4096, "pos": 4095}, bytes="8*KVH*(pos+1)*D")

variable.bind("gqa_decode > expr 'H / KVH'", "G")
loop.move_out("gqa_decode > for h > def G")
llm.group_heads("gqa_decode > for h", "G", "scores", "pos + 1")
parallel.parallel_for("gqa_decode > for g#1")
parallel.parallel_for("gqa_decode > for g#2")
vector.vectorize("gqa_decode > for g#2")
