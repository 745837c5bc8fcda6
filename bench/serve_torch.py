"""The PyTorch baseline of scripts/bench-serve.sh: torchvision's inception_v3
with the same weights as the served checkpoint (our variables carry
torchvision's names), behind Python's http.server, one request at a time.
POST /v1/classify with an image body answers the top-5 labels (background,
output 0, left out) as JSON; the preprocessing is the evaluation's: the
central 87.5 %, a bilinear resize, [-1, 1].

Usage: python bench/serve_torch.py --weights FILE.safetensors --port N
         [--image-size 299] [--threads 0] [--precision fp32|bf16]
--precision bf16: the forward pass in torch.autocast("cpu", bfloat16) with
model and input in channels_last, PyTorch's own fast recipe on CPUs with
bf16 instructions.
Loopback only.
"""
import argparse
import io
import json
from http.server import BaseHTTPRequestHandler, HTTPServer

import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file


def build(weights, image_size):
    state = load_file(weights)
    classes = state["fc.weight"].shape[0]
    model = torchvision.models.inception_v3(
        weights=None, aux_logits=False, transform_input=False, init_weights=False, num_classes=classes
    )
    # No auxiliary head: unused at inference, and ours is shaped for the input size.
    # Only the model's own variables: a checkpoint may also hold optimizer slots and averages.
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise SystemExit(f"{weights}: not torchvision's full-width Inception-v3 (missing {missing[:3]} ...)")
    model.load_state_dict({k: state.get(k, own[k]) for k in own})
    model.eval()
    return model


def preprocess(body, size):
    image = Image.open(io.BytesIO(body)).convert("RGB")
    w, h = image.size
    cw, ch = int(w * 0.875), int(h * 0.875)
    left, top = (w - cw) // 2, (h - ch) // 2
    image = image.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BILINEAR)
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return (x.permute(2, 0, 1).float() / 255.0 - 0.5).mul(2.0).unsqueeze(0)


def handler(model, size, precision):
    low = precision == "bf16"
    layout = torch.channels_last if low else torch.contiguous_format

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                x = preprocess(body, size)
            except Exception as e:  # a bad image: 400, as the server does
                return self.reply(400, {"error": str(e)})
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
                probabilities = model(x.contiguous(memory_format=layout)).float().softmax(-1)[0, 1:]
            values, indices = probabilities.topk(min(5, probabilities.numel()))
            predictions = [{"index": int(i) + 1, "probability": float(v)} for v, i in zip(values, indices)]
            self.reply(200, {"results": [{"image": 0, "predictions": predictions}]})

        def do_GET(self):
            self.reply(200, {"ready": True})

        def reply(self, status, obj):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return Handler


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--image-size", type=int, default=299)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    model = build(a.weights, a.image_size)
    if a.precision == "bf16":
        model = model.to(memory_format=torch.channels_last)
    # HTTP/1.0: a connection per request, so that concurrent clients queue
    # in accept order instead of one kept-alive client holding the server.
    # A deep accept queue: 32 clients wait their turn instead of having
    # their connections dropped (and retried a second later) by a backlog of 5.
    HTTPServer.request_queue_size = 128
    HTTPServer(("127.0.0.1", a.port), handler(model, a.image_size, a.precision)).serve_forever()


if __name__ == "__main__":
    main()
