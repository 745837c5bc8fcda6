"""Converts the TorchScript module `inception export` traced to ONNX with
PyTorch's TorchScript-based exporter (`dynamo=False`: it needs torch and the
`onnx` package, not onnxscript). Run by `inception export --format onnx`.

Usage: python -c <this file> MODULE.pt OUT.onnx IMAGE_SIZE OPSET
Prints one JSON line (versions, opset and, where onnxruntime is installed,
the largest difference of its logits from the module's on a random batch). Exit status 3: a package is
missing, named on stderr as "missing: <package>".
"""
import json
import sys
import warnings


def need(package):
    try:
        return __import__(package)
    except ImportError as e:
        print(f"missing: {package} ({e})", file=sys.stderr)
        sys.exit(3)


def main():
    module_path, out, size, opset = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch = need("torch")
    onnx = need("onnx")
    module = torch.jit.load(module_path, map_location="cpu").eval()
    example = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated, not gone; its warnings would read as failures.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            out,
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    onnx.checker.check_model(onnx.load(out))
    report = {"torch": torch.__version__, "onnx": onnx.__version__, "opset": opset}
    report.update(check(torch, module, out, size))
    print(json.dumps(report))


def check(torch, module, out, size):
    """With onnxruntime: the largest |logit difference| from the module on a batch of 3."""
    try:
        import onnxruntime
    except ImportError:
        return {"checked_with": None, "checked_max_abs_logit_difference": None}
    x = torch.rand(3, 3, size, size) * 2 - 1
    with torch.no_grad():
        expected = module(x).numpy()
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input": x.numpy()})[0]
    return {
        "checked_with": f"onnxruntime {onnxruntime.__version__}",
        "checked_max_abs_logit_difference": float(abs(got - expected).max()),
    }


if __name__ == "__main__":
    main()
