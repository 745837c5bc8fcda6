"""Writes a torchvision Inception-v3 (random weights, randomised batch-norm
statistics), an input batch and torchvision's eval-mode logits to one
safetensors file, for the parity test in torchvision_parity.rs.

Usage: python torchvision_reference.py OUT.safetensors
"""
import json
import struct
import sys

import torch
import torchvision

DTYPES = {torch.float32: "F32", torch.int64: "I64"}


def save_safetensors(tensors, path):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.detach().contiguous().cpu().numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def main():
    torch.manual_seed(0)
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=False, init_weights=True, num_classes=7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.rand(2, 3, 299, 299) * 2 - 1
    with torch.no_grad():
        logits = model(x)
    tensors = dict(model.state_dict())
    tensors["test.input"] = x
    tensors["test.logits"] = logits
    save_safetensors(tensors, sys.argv[1])


if __name__ == "__main__":
    main()
