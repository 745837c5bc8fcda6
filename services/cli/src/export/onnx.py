"""Converts the TorchScript module `inception export` traced to ONNX with
PyTorch's TorchScript-based exporter (`dynamo=False`: it needs torch and the
`onnx` package, not onnxscript). Run by `inception export --format onnx`.

Usage: python -c <this file> MODULE.pt OUT.onnx IMAGE_SIZE OPSET
Prints one JSON line (versions, opset). Exit status 3: a package is
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
    print(json.dumps({"torch": torch.__version__, "onnx": onnx.__version__, "opset": opset}))


if __name__ == "__main__":
    main()
