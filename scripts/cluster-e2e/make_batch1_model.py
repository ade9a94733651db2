#!/usr/bin/env python3
"""Write the e2e's bad model: titanic-v1 exported with a fixed batch size of 1.

A classic bad model push: it loads, answers /ping and passes the model server's one-row dry
run, but every request with more than one row fails inside the runtime (HTTP 500,
`inference_failed`). examples/titanic/request.json has two rows, so a Canary to it must roll
back on maxErrorRate. The graph is v1's with its output averaged over the batch
(`ReduceMean` on axis 0, keepdims): [1, 1] whatever the batch, which the server rejects for
N > 1 ("output shape [1, 1], expected [N, 1]"). (A `Reshape` of the input to [1, F] made tract
panic while optimising; declaring dim 0 as 1 is ignored: tract re-types the input.)

Needs (only when re-generating; the archive is committed): pip install onnx
  python3 scripts/cluster-e2e/make_batch1_model.py
Writes scripts/cluster-e2e/titanic-batch1.tar.gz (reproducible: sorted entries, mtime 0, uid 0)
and prints its sha256.
"""
import gzip
import hashlib
import io
import json
import os
import tarfile

import onnx
from onnx import TensorProto, helper

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "..", "examples", "titanic", "artifacts", "titanic-v1.tar.gz")
OUT = os.path.join(HERE, "titanic-batch1.tar.gz")

with tarfile.open(SRC) as t:
    files = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
model = onnx.load_from_string(files["model.onnx"])
g = model.graph
out = g.output[0].name
for node in g.node:
    node.output[:] = ["batch1_rows" if o == out else o for o in node.output]
g.node.append(helper.make_node("ReduceMean", ["batch1_rows"], [out], axes=[0], keepdims=1))
dim0 = g.output[0].type.tensor_type.shape.dim[0]
dim0.ClearField("dim_param")
dim0.dim_value = 1
onnx.checker.check_model(model)
files["model.onnx"] = model.SerializeToString()
meta = json.loads(files["metadata.json"])
meta["version"] = "batch1"
meta["description"] = "titanic-v1 exported with a fixed batch size of 1 (fails on 2+ rows)"
files["metadata.json"] = (json.dumps(meta, indent=2) + "\n").encode()

raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as t:
    for name in sorted(files):
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(files[name]), 0, 0o644
        t.addfile(info, io.BytesIO(files[name]))
gz = io.BytesIO()
with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
    g.write(raw.getvalue())
open(OUT, "wb").write(gz.getvalue())
print(hashlib.sha256(gz.getvalue()).hexdigest())
