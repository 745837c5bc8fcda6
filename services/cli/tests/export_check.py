"""Loads an export of `inception export` the way a user would and writes
its logits for a fixed input, for services/cli/tests/export.rs.

Usage: python export_check.py FORMAT EXPORT INPUT.f32 BATCH SIZE OUT.f32
INPUT.f32: BATCH x 3 x SIZE x SIZE little-endian float32 (NCHW, [-1, 1]).
OUT.f32: the logits, BATCH x classes float32. Exit status 3: a package
needed to load this format is missing (named on stderr).
"""
import importlib
import json
import sys

import numpy as np
import torch


def need(package):
    try:
        return importlib.import_module(package)
    except ImportError as e:
        print(f"missing: {package} ({e})", file=sys.stderr)
        sys.exit(3)


def torchscript_logits(path, x):
    module = torch.jit.load(path, map_location="cpu")
    with torch.no_grad():
        return module(x).numpy()


def onnx_logits(path, x):
    ort = need("onnxruntime")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x.numpy()})[0]


def torchvision_logits(path, x):
    torchvision = need("torchvision")
    st = need("safetensors.torch")
    with open(path + ".json") as f:
        constructor = json.load(f)["torchvision"]["constructor"]
    model = torchvision.models.inception_v3(**constructor)
    model.load_state_dict(st.load_file(path))  # strict: every name and shape
    model.eval()
    with torch.no_grad():
        return model(x).numpy()


def main():
    fmt, path, input_path, batch, size, out = sys.argv[1:7]
    x = np.fromfile(input_path, dtype="<f4").reshape(int(batch), 3, int(size), int(size))
    x = torch.from_numpy(x.copy())
    logits = {"torchscript": torchscript_logits, "onnx": onnx_logits, "torchvision": torchvision_logits}[fmt](path, x)
    np.asarray(logits, dtype="<f4").tofile(out)
    print(json.dumps({"shape": list(logits.shape)}))


if __name__ == "__main__":
    main()
