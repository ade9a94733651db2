#!/usr/bin/env python3
"""Train the two Titanic example models and write their artifacts.

Needs (only when re-training, never at test time): pip install scikit-learn onnx numpy
  python3 examples/titanic/make_data.py && python3 examples/titanic/train.py

Writes under examples/titanic/:
  artifacts/titanic-v1.tar.gz  logistic regression on pclass, sex, age, fare
  artifacts/titanic-v2.tar.gz  small MLP (16 ReLU units) on all seven features
  artifacts/SHA256SUMS         sha256 of both archives (what Model.spec.artifact.sha256 holds)
  expected.json                predictions of both versions for fixed passengers (contract tests)

Each archive holds `model.onnx` and `metadata.json`. The ONNX graphs are written with
`onnx.helper` as plain standard ops (Sub, Div, MatMul, Add, Relu, Sigmoid; opset 13) instead of
skl2onnx, whose classifiers emit ONNX-ML ops (ZipMap, LinearClassifier) that pure-Rust engines
support only partly. Standardisation is inside the graph, so the server only maps each feature
to one float: numbers as is, categories to the index of their value in `metadata.features[].values`.
Input: "input" float32 [N, F] in metadata feature order. Output: "probability" float32 [N, 1]
(probability of survived = 1). Archives are reproducible (sorted entries, mtime 0, uid 0).
"""
import csv
import gzip
import hashlib
import io
import json
import os
import tarfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

HERE = os.path.dirname(os.path.abspath(__file__))
CATEGORIES = {"sex": ["male", "female"], "embarked": ["S", "C", "Q"]}
TYPES = {"pclass": "integer", "sex": "category", "age": "number", "sibsp": "integer",
         "parch": "integer", "fare": "number", "embarked": "category"}
V1_FEATURES = ["pclass", "sex", "age", "fare"]
V2_FEATURES = ["pclass", "sex", "age", "sibsp", "parch", "fare", "embarked"]

# Fixed passengers for expected.json; the first-class man with a very high fare (and the
# toddler in third class) are where the linear v1 and the MLP v2 disagree.
FIXED = [
    {"pclass": 3, "sex": "male", "age": 22.0, "sibsp": 1, "parch": 0, "fare": 7.25, "embarked": "S"},
    {"pclass": 1, "sex": "female", "age": 38.0, "sibsp": 1, "parch": 0, "fare": 71.28, "embarked": "C"},
    {"pclass": 3, "sex": "female", "age": 26.0, "sibsp": 4, "parch": 2, "fare": 31.27, "embarked": "S"},
    {"pclass": 2, "sex": "male", "age": 4.0, "sibsp": 1, "parch": 1, "fare": 23.0, "embarked": "S"},
    {"pclass": 1, "sex": "male", "age": 54.0, "sibsp": 0, "parch": 0, "fare": 51.86, "embarked": "S"},
    {"pclass": 3, "sex": "female", "age": 2.0, "sibsp": 3, "parch": 1, "fare": 21.07, "embarked": "Q"},
    {"pclass": 1, "sex": "male", "age": 52.0, "sibsp": 0, "parch": 0, "fare": 225.11, "embarked": "C"},
    {"pclass": 3, "sex": "male", "age": 0.5, "sibsp": 0, "parch": 0, "fare": 9.5, "embarked": "S"},
]


def encode(row, features):
    out = []
    for f in features:
        v = row[f]
        out.append(float(CATEGORIES[f].index(v)) if f in CATEGORIES else float(v))
    return out


def load():
    with open(os.path.join(HERE, "data", "titanic.csv")) as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in ("pclass", "sibsp", "parch", "survived"):
            r[k] = int(r[k])
        for k in ("age", "fare"):
            r[k] = float(r[k])
    return rows


def graph(name, features, mean, std, layers):
    """layers: list of (W, b, activation) with activation in {"relu", "sigmoid"}."""
    f32 = lambda a: np.asarray(a, dtype=np.float32)
    inits = [numpy_helper.from_array(f32(mean).reshape(1, -1), "mean"),
             numpy_helper.from_array(f32(std).reshape(1, -1), "std")]
    nodes = [helper.make_node("Sub", ["input", "mean"], ["centered"]),
             helper.make_node("Div", ["centered", "std"], ["h0"])]
    cur = "h0"
    for i, (w, b, act) in enumerate(layers):
        inits += [numpy_helper.from_array(f32(w), f"W{i}"), numpy_helper.from_array(f32(b).reshape(1, -1), f"B{i}")]
        nodes += [helper.make_node("MatMul", [cur, f"W{i}"], [f"mm{i}"]),
                  helper.make_node("Add", [f"mm{i}", f"B{i}"], [f"z{i}"])]
        out = "probability" if act == "sigmoid" else f"h{i + 1}"
        nodes.append(helper.make_node("Sigmoid" if act == "sigmoid" else "Relu", [f"z{i}"], [out]))
        cur = out
    g = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", len(features)])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1])],
        inits)
    m = helper.make_model(g, producer_name="mlep-examples-titanic", opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def numpy_forward(x, mean, std, layers):
    h = (np.asarray(x, np.float32) - np.float32(mean)) / np.float32(std)
    for w, b, act in layers:
        z = h @ np.float32(w) + np.float32(b)
        h = 1 / (1 + np.exp(-z)) if act == "sigmoid" else np.maximum(z, 0)
    return h[:, 0]


def metadata(version, features, description):
    feats = []
    for f in features:
        d = {"name": f, "type": TYPES[f]}
        if f in CATEGORIES:
            d["values"] = CATEGORIES[f]
        feats.append(d)
    return {
        "name": "titanic", "version": version, "description": description,
        "format": "onnx", "model": "model.onnx", "input": "input", "output": "probability",
        "features": feats,
        "prediction": {"label": "survived", "probability": "probability", "threshold": 0.5, "labels": [0, 1]},
    }


def pack(path, files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    with open(path, "wb") as fh:
        with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
            gz.write(buf.getvalue())


def main():
    rows = load()
    y = np.array([r["survived"] for r in rows])
    models = {}

    x1 = np.array([encode(r, V1_FEATURES) for r in rows], np.float64)
    mean1, std1 = x1.mean(0), x1.std(0)
    lr = LogisticRegression(max_iter=1000).fit((x1 - mean1) / std1, y)
    layers1 = [(lr.coef_.T, lr.intercept_, "sigmoid")]
    models["v1"] = (V1_FEATURES, mean1, std1, layers1, "logistic regression on pclass, sex, age, fare")

    x2 = np.array([encode(r, V2_FEATURES) for r in rows], np.float64)
    mean2, std2 = x2.mean(0), x2.std(0)
    mlp = MLPClassifier(hidden_layer_sizes=(16,), activation="relu", alpha=1e-3, max_iter=3000,
                        random_state=7).fit((x2 - mean2) / std2, y)
    layers2 = [(mlp.coefs_[0], mlp.intercepts_[0], "relu"), (mlp.coefs_[1], mlp.intercepts_[1], "sigmoid")]
    models["v2"] = (V2_FEATURES, mean2, std2, layers2, "MLP (16 ReLU units) on all seven features")

    expected = {"inputs": FIXED, "threshold": 0.5, "tolerance": 1e-4, "versions": {}}
    sums = []
    os.makedirs(os.path.join(HERE, "artifacts"), exist_ok=True)
    for version, (features, mean, std, layers, desc) in models.items():
        m = graph(f"titanic_{version}", features, mean, std, layers)
        meta = metadata(version, features, desc)
        name = f"titanic-{version}.tar.gz"
        path = os.path.join(HERE, "artifacts", name)
        pack(path, {"model.onnx": m.SerializeToString(),
                    "metadata.json": (json.dumps(meta, indent=2) + "\n").encode()})
        sums.append(f"{hashlib.sha256(open(path, 'rb').read()).hexdigest()}  {name}")
        xs = np.array([encode(r, features) for r in FIXED])
        probs = numpy_forward(xs, mean, std, layers)
        acc = float(((numpy_forward(np.array([encode(r, features) for r in rows]), mean, std, layers) >= 0.5) == y).mean())
        expected["versions"][version] = {
            "artifact": name, "train_accuracy": round(acc, 4),
            "predictions": [{"survived": int(p >= 0.5), "probability": round(float(p), 6)} for p in probs],
        }
        print(f"{version}: train accuracy {acc:.3f}, fixed-input probabilities {np.round(probs, 3).tolist()}")
    v1 = [p["survived"] for p in expected["versions"]["v1"]["predictions"]]
    v2 = [p["survived"] for p in expected["versions"]["v2"]["predictions"]]
    if v1 == v2:
        raise SystemExit("v1 and v2 agree on every fixed input; the example needs versions that differ")
    with open(os.path.join(HERE, "artifacts", "SHA256SUMS"), "w") as fh:
        fh.write("\n".join(sums) + "\n")
    with open(os.path.join(HERE, "expected.json"), "w") as fh:
        json.dump(expected, fh, indent=2)
        fh.write("\n")


if __name__ == "__main__":
    main()
