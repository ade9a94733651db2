#!/usr/bin/env python3
"""Generate a synthetic, Titanic-like passenger table (no third-party data, no licence question).

Deterministic: Python's own `random.Random(SEED)` (stable across Python versions for the calls
used here: random(), gauss(), choices() with weights), so the CSV is byte-for-byte reproducible.

Rules (documented so the data has a known ground truth):
- pclass: 1/2/3 with probabilities 0.24/0.21/0.55.
- sex: female with probability 0.35.
- age: gauss(mean 30, sd 14) clipped to [0.5, 80], rounded to 0.5; 8% children drawn in [0.5, 12].
- sibsp: 0 (68%), 1 (23%), 2..5 (9%); parch: 0 (76%), 1 (13%), 2..4 (11%).
- fare: base by class (1: 84, 2: 21, 3: 13) * lognormal-ish factor exp(gauss(0, 0.45)), 2 decimals.
- embarked: S/C/Q with probabilities 0.72/0.19/0.09; class-1 passengers embark at C more often.
- survived ~ Bernoulli(sigmoid(z)) with
    z = -2.0 + 2.4*[female] + 0.95*(3 - pclass) - 0.028*(age - 30) + 1.3*[age < 12]
        - 0.55*[sibsp >= 3] - 0.35*[parch >= 3] + 0.25*[embarked == C] + 0.004*min(fare, 200)
        - 1.2*[female and pclass == 3 and sibsp + parch >= 3]   (large poor families fared worse)
  The interaction term is there so a non-linear model (v2) can differ from a linear one (v1).

Usage: python3 make_data.py [out.csv]   (default: data/titanic.csv next to this script)
"""
import csv
import math
import os
import random
import sys

SEED = 1912
ROWS = 1200
FIELDS = ["pclass", "sex", "age", "sibsp", "parch", "fare", "embarked", "survived"]


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def passenger(rng):
    pclass = rng.choices([1, 2, 3], weights=[0.24, 0.21, 0.55])[0]
    sex = "female" if rng.random() < 0.35 else "male"
    if rng.random() < 0.08:
        age = 0.5 + rng.random() * 11.5
    else:
        age = min(80.0, max(0.5, rng.gauss(30.0, 14.0)))
    age = round(age * 2) / 2
    sibsp = rng.choices([0, 1, 2, 3, 4, 5], weights=[68, 23, 3, 3, 2, 1])[0]
    parch = rng.choices([0, 1, 2, 3, 4], weights=[76, 13, 6, 3, 2])[0]
    fare = round({1: 84.0, 2: 21.0, 3: 13.0}[pclass] * math.exp(rng.gauss(0.0, 0.45)), 2)
    emb_w = [0.55, 0.40, 0.05] if pclass == 1 else [0.76, 0.13, 0.11]
    embarked = rng.choices(["S", "C", "Q"], weights=emb_w)[0]
    female = 1.0 if sex == "female" else 0.0
    z = (-2.0 + 2.4 * female + 0.95 * (3 - pclass) - 0.028 * (age - 30.0)
         + 1.3 * (age < 12) - 0.55 * (sibsp >= 3) - 0.35 * (parch >= 3)
         + 0.25 * (embarked == "C") + 0.004 * min(fare, 200.0)
         - 1.2 * (sex == "female" and pclass == 3 and sibsp + parch >= 3))
    survived = 1 if rng.random() < sigmoid(z) else 0
    return [pclass, sex, age, sibsp, parch, fare, embarked, survived]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "data", "titanic.csv")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    rng = random.Random(SEED)
    with open(out, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(FIELDS)
        for _ in range(ROWS):
            w.writerow(passenger(rng))
    print(f"wrote {ROWS} rows to {out}")


if __name__ == "__main__":
    main()
