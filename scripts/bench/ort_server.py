"""onnxruntime behind uvicorn: the other side of scripts/bench-model-server-ort.sh.

Two uses:

    python3 scripts/bench/ort_server.py make DIR
        writes the benchmark's model into DIR: model.onnx (an MLP of plain ONNX ops, fixed
        seed), metadata.json for mlep-model-server, and the request bodies req1.json and
        req256.json (`{"instances": [[...], ...]}`, positional rows).

    ORT_MODEL_DIR=DIR uvicorn ort_server:app --workers 2 --loop uvloop --http httptools
        serves DIR the way mlep-model-server does, for the request shape the benchmark sends:
        POST /invocations with `{"instances": [[...], ...]}` or `[[...], ...]` (numbers in
        metadata feature order), answering `{"predictions": [{<label>: .., <probability>: ..}]}`
        with probabilities rounded to 6 decimals, labels by the metadata's threshold; GET /ping.
        orjson parses and encodes; ORT_THREADS (default 1) is each worker's intra-op threads.

Records, columns and CSV, which the model server also accepts, are not implemented here.
"""

import os
import sys

FEATURES = 32
HIDDEN = 256
SEED = 2026


def make(out_dir):
    """The MLP FEATURES -> HIDDEN -> HIDDEN -> 1 (Relu, Relu, Sigmoid), weights from SEED."""
    import json

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)

    def dense(n_in, n_out, scale):
        w = (rng.standard_normal((n_in, n_out)) * scale).astype(np.float32)
        b = (rng.standard_normal(n_out) * 0.01).astype(np.float32)
        return w, b

    w1, b1 = dense(FEATURES, HIDDEN, (2.0 / FEATURES) ** 0.5)
    w2, b2 = dense(HIDDEN, HIDDEN, (2.0 / HIDDEN) ** 0.5)
    # Small output weights keep the probabilities away from 0 and 1, where they would
    # compare equal by accident.
    w3, b3 = dense(HIDDEN, 1, 0.05)
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (w3, "w3"), (b3, "b3")]]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h1m"]),
        helper.make_node("Add", ["h1m", "b1"], ["h1a"]),
        helper.make_node("Relu", ["h1a"], ["h1"]),
        helper.make_node("MatMul", ["h1", "w2"], ["h2m"]),
        helper.make_node("Add", ["h2m", "b2"], ["h2a"]),
        helper.make_node("Relu", ["h2a"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w3"], ["logit"]),
        helper.make_node("Add", ["logit", "b3"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes, "bench_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="mlep-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    os.makedirs(out_dir, exist_ok=True)
    onnx.save(model, os.path.join(out_dir, "model.onnx"))
    meta = {
        "name": "bench-mlp", "version": "v1", "format": "onnx", "model": "model.onnx",
        "input": "input", "output": "probability",
        "features": [{"name": f"f{i:02d}", "type": "number"} for i in range(FEATURES)],
        "prediction": {"label": "label", "probability": "probability", "threshold": 0.5,
                       "labels": [0, 1]},
    }
    with open(os.path.join(out_dir, "metadata.json"), "w") as f:
        json.dump(meta, f, indent=1)
    rows = np.round(rng.standard_normal((256, FEATURES)), 4).tolist()
    for n in (1, 256):
        with open(os.path.join(out_dir, f"req{n}.json"), "w") as f:
            json.dump({"instances": rows[:n]}, f, separators=(",", ":"))


def _load():
    import numpy as np
    import onnxruntime as ort
    import orjson

    model_dir = os.environ["ORT_MODEL_DIR"]
    with open(os.path.join(model_dir, "metadata.json"), "rb") as f:
        meta = orjson.loads(f.read())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("ORT_THREADS", "1"))
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(os.path.join(model_dir, meta["model"]), opts,
                                providers=["CPUExecutionProvider"])
    return np, orjson, meta, sess


if __name__ != "__main__":
    np, orjson, META, SESSION = _load()
    INPUT = SESSION.get_inputs()[0].name
    NFEAT = len(META["features"])
    PRED = META["prediction"]
    LABEL, PROB, THRESHOLD = PRED["label"], PRED["probability"], PRED["threshold"]
    NEG, POS = PRED["labels"]
    JSON = [(b"content-type", b"application/json")]
    PONG = orjson.dumps({"status": "ok", "model": f"{META['name']}:{META['version']}"})


def _error(status, code, message):
    return status, orjson.dumps({"error": {"code": code, "message": message}})


def invocations(body):
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        return _error(400, "malformed", f"invalid JSON: {e}")
    rows = doc.get("instances") if isinstance(doc, dict) else doc
    try:
        x = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as e:
        return _error(400, "malformed", f"rows must be arrays of numbers: {e}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != NFEAT:
        return _error(400, "wrong_arity", f"expected [N, {NFEAT}] numbers, got {x.shape}")
    p = SESSION.run(None, {INPUT: x})[0].reshape(-1)
    preds = [{LABEL: POS if v >= THRESHOLD else NEG, PROB: round(v, 6)} for v in p.tolist()]
    return 200, orjson.dumps({"predictions": preds})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            kind = msg["type"].rsplit(".", 1)[-1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    if path == "/ping" and method == "GET":
        status, out = 200, PONG
    elif path == "/invocations" and method == "POST":
        chunks, more = [], True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        status, out = invocations(b"".join(chunks))
    else:
        status, out = _error(404, "not_found", f"no route for {method} {path}")
    await send({"type": "http.response.start", "status": status, "headers": JSON})
    await send({"type": "http.response.body", "body": out})


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "make":
        sys.exit(f"usage: {sys.argv[0]} make DIR")
    make(sys.argv[2])
