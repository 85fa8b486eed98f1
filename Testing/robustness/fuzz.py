"""A request fuzzer for the worker: every route of its OpenAPI, with valid, mutated and hostile bodies, headers
and path parameters. Heavy work is kept out by construction (predicts only on the cached liver slice, training
and propagation bodies never fully valid), so thousands of requests run in minutes on a CPU.
"""

from __future__ import annotations

import base64
import json
import random
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from harness import LIVER_BOX, LIVER_SLICE

WEIRD_STRINGS = ["", " ", "a" * 5000, "../../../etc/passwd", "/dev/zero", "%00", "\x00", "☃" * 50, "NaN", "1e309",
                 "{}", "[]", "null", "$(rm -rf /)", "<script>", "x" * 300 + "/y"]
WEIRD_VALUES: list[Any] = [None, True, -1, 0, 2**63, -(2**63), 1e308, -1e308, 3.5, "3", [], {}, [1, 2], {"a": 1},
                           "a" * 1000, [[0, 0]] * 300, list(range(5000))]


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    requests: int = 0


def encoded(shape: list[int], dtype: str = "bool", data: Optional[bytes] = None) -> dict:
    count = 1
    for extent in shape:
        count *= max(extent, 0)
    raw = data if data is not None else bytes((count + 7) // 8 if dtype == "bool" else count * (2 if dtype == "float16" else 4))
    return {"shape": shape, "dtype": dtype, "data": base64.b64encode(zlib.compress(raw)).decode()}


class Fuzzer:
    """Makes one random request at a time; ``send(method, path, body, headers)`` performs it."""

    def __init__(self, ct_id: str, ct_path: str, data_root: str, seed: int) -> None:
        self.rng = random.Random(seed)
        self.ct_id, self.ct_path, self.data_root = ct_id, ct_path, data_root
        self.routes: list[Callable[[], tuple[str, str, Any, dict]]] = [
            self.health, self.models, self.list_volumes, self.volume, self.delete_volume, self.upload, self.from_path,
            self.predict, self.predict, self.predict, self.embed, self.train, self.propagate, self.auto_segment,
            self.artefacts, self.jobs, self.job, self.cancel, self.focus, self.raw_garbage,
        ]

    def next(self) -> tuple[str, str, Any, dict]:
        method, path, body, headers = self.rng.choice(self.routes)()
        if method == "POST" and "Content-Type" not in headers:
            headers["Content-Type"] = self.rng.choice(["application/json"] * 12 + ["text/plain", "", "application/json; charset=utf-8"])
        roll = self.rng.random()
        if roll < 0.03:
            headers["Host"] = self.rng.choice(["evil.example", "127.0.0.1.evil.example:80", "", "[::1]", "localhost:1"])
        elif roll < 0.06:
            headers["Origin"] = self.rng.choice(["http://evil.example", "null", "file://", "http://127.0.0.1:1"])
        return method, path, body, {name: value.encode() for name, value in headers.items()}  # UTF-8 on the wire

    # ids ------------------------------------------------------------------------------------------------
    def volume_id(self) -> str:
        return self.rng.choice([self.ct_id] * 6 + ["0" * 32, "nope", "%2e%2e%2f%2e%2e", "a" * 300, "..", "-1"])

    def job_id(self) -> str:
        return self.rng.choice(["0" * 16, "nope", "a" * 300, "%00", "..%2f.."])

    def mutate(self, body: dict) -> Any:
        """A valid-looking body, or one field dropped, replaced by a weird value, or an unknown field added."""
        roll = self.rng.random()
        body = dict(body)
        if roll < 0.35 or not body:
            return body
        key = self.rng.choice(sorted(body))
        if roll < 0.5:
            del body[key]
        elif roll < 0.85:
            body[key] = self.rng.choice(WEIRD_VALUES + WEIRD_STRINGS)
        elif roll < 0.92:
            body["unexpected"] = 1
        else:
            return self.rng.choice([[], "text", 42, None, [body]])
        return body

    # routes ---------------------------------------------------------------------------------------------
    def health(self):
        return "GET", "/v1/health", None, {}

    def models(self):
        return "GET", "/v1/models", None, {}

    def list_volumes(self):
        return "GET", "/v1/volumes", None, {}

    def volume(self):
        return "GET", f"/v1/volumes/{self.volume_id()}", None, {}

    def delete_volume(self):
        victim = self.rng.choice(["0" * 32, "nope", "a" * 200])  # never the CT: predicts would 404 meanwhile
        return "DELETE", f"/v1/volumes/{victim}", None, {}

    def upload(self):
        shape = self.rng.choice([[2, 8, 8], [3, 16, 16], [1, 1, 1], [0, 4, 4], [65536, 2, 2], [4096, 4096, 4096], [2, 8]])
        dtype = self.rng.choice(["uint8", "int16", "float32", "complex64", "bool", "float64"])
        size = 1
        for extent in shape:
            size *= extent
        kind = self.rng.random()
        if kind < 0.4 and size < 10**6:
            itemsize = {"uint8": 1, "int16": 2, "float32": 4, "float64": 8}.get(dtype, 1)
            body = zlib.compress(self.rng.randbytes(size * itemsize))
        elif kind < 0.6:
            body = zlib.compress(bytes(self.rng.randint(1, 2**22)))  # a small bomb
        elif kind < 0.8:
            body = self.rng.randbytes(self.rng.randint(0, 4096))  # not zlib
        else:
            body = b""
        meta = self.mutate({"shape": shape, "dtype": dtype, "spacing": [1, 1, 2],
                            "compression": self.rng.choice(["zlib", "zlib", "none", "gzip"])})
        header = json.dumps(meta) if self.rng.random() < 0.9 else self.rng.choice(WEIRD_STRINGS[:8])
        return "POST", "/v1/volumes", body, {"Content-Type": "application/octet-stream", "X-SAMMed-Volume": header}

    def from_path(self):
        path = self.rng.choice([self.ct_path, f"{self.data_root}/missing.nii", "/dev/zero", "/proc/self/mem",
                                self.data_root, f"{self.data_root}/../../etc/shadow", "~", "relative.nii", *WEIRD_STRINGS])
        return "POST", "/v1/volumes/from-path", self.mutate({"path": path}), {}

    def predict(self):
        x0, y0 = self.rng.uniform(-50, 150), self.rng.uniform(-50, 150)
        box = self.rng.choice([LIVER_BOX, [x0, y0, x0 + self.rng.uniform(-10, 80), y0 + self.rng.uniform(-10, 80)]])
        body: dict[str, Any] = {"index": self.rng.choice([LIVER_SLICE] * 8 + [-1, 30, 10**9]), "box": box}
        extra = self.rng.random()
        if extra < 0.2:
            body["points"] = [[self.rng.uniform(-20, 140), self.rng.uniform(-20, 120)] for _ in range(self.rng.randint(0, 5))]
            body["labels"] = [self.rng.choice([0, 1, 2]) for _ in range(self.rng.randint(0, 5))]
        elif extra < 0.3:
            shape = self.rng.choice([[256, 256], [1, 256, 256], [16384, 16384], [2, 2], [-1, 4]])
            body["mask_input"] = encoded(shape, self.rng.choice(["float16", "float32", "bool", "int8"]))
        elif extra < 0.4:
            body["window"] = self.rng.choice(["abdomen", "lung", "40,400", "nan,1", "inf,1", "40,0", "x", "1,2,3"])
        elif extra < 0.5:
            body["use_previous_mask"] = True
            body["session"] = self.rng.choice(["a", "b", "x" * 200])
        elif extra < 0.55:
            body["multimask"] = True
        elif extra < 0.6:
            body["model"] = self.rng.choice(["nope", "../x", "litemedsam", "x" * 100])  # (a model without its
            # checkpoint answers 503 checkpoint_error by design: the server cannot serve it; tested in tests/)
        elif extra < 0.65:
            body["prompt_encoder"] = self.rng.choice(["nope-123", "/etc/passwd", "../../x"])
        return "POST", f"/v1/volumes/{self.volume_id()}/predict", self.mutate(body), {}

    def embed(self):
        body = {"slices": self.rng.choice([[LIVER_SLICE], [-1], [10**6], [], "all"]), "axis": self.rng.choice([2, 2, 5])}
        return "POST", f"/v1/volumes/{self.volume_id()}/embed", self.mutate(body), {}

    def train(self):
        masks = encoded(self.rng.choice([[1, 4, 4], [1, 16384, 16384], [2, 101, 122], [1, 101]]))  # never (1, 101, 122)
        body = {"kind": self.rng.choice(["sapnet", "prompt_encoder", "x"]),
                "annotations": {"axis": 2, "indices": [LIVER_SLICE], "masks": masks}}
        return "POST", f"/v1/volumes/{self.volume_id()}/train", self.mutate(body), {}

    def propagate(self):
        shape = self.rng.choice([[101, 122], [16384, 16384], [4, 4]])
        body = {"index": LIVER_SLICE, "mask": encoded(shape), "direction": self.rng.choice(["up", "down", "both", "x"])}
        return "POST", f"/v1/volumes/{self.volume_id()}/propagate", self.mutate(body), {}  # (101, 122) is empty: 400

    def auto_segment(self):
        body = {"artefact": self.rng.choice(["nope-1234567890", "/etc/passwd", "..", "a" * 200])}
        return "POST", f"/v1/volumes/{self.volume_id()}/auto-segment", self.mutate(body), {}

    def artefacts(self):
        kind = self.rng.choice(["", "?kind=sapnets", "?kind=nope", "?kind=../../x", "?kind=" + "a" * 500])
        return "GET", f"/v1/artefacts{kind}", None, {}

    def jobs(self):
        return "GET", "/v1/jobs", None, {}

    def job(self):
        return "GET", f"/v1/jobs/{self.job_id()}", None, {}

    def cancel(self):
        return "POST", f"/v1/jobs/{self.job_id()}/cancel", None, {}

    def focus(self):
        return "POST", f"/v1/jobs/{self.job_id()}/focus", self.mutate({"index": 3}), {}

    def raw_garbage(self):
        method = self.rng.choice(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
        path = self.rng.choice(["/", "/v1", "/v1/", "/docs", "/openapi.json", "/v1/volumes/x/y/z", "/v2/health", "/%ff"])
        body = self.rng.choice([None, b"{", b"\xff\xfe", json.dumps({"a": [1] * 1000}).encode()])
        return method, path, body, {}
