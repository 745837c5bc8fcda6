#!/usr/bin/env python3
"""Writes the hostile-input corpus of issue 16: inputs an attacker or a
hurried uploader could hand each stage, made here from one good JPEG so that
no large file is committed. tests/tests/hostile_corpus.rs runs every stage
on them (ingest, records, classify, preprocess, trainer, evaluator, settings)
and checks that each is refused with a reason naming it, that nothing hangs
or crashes, and that the good inputs beside them are all used.

    scripts/hostile-corpus.py OUT_DIR GOOD_JPEG

OUT_DIR/manifest.json lists every input: its kind, the stage it is for and
its name. Standard library only (no Pillow, no protobuf).
"""

import json
import os
import struct
import sys
import zlib
from pathlib import Path


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def example(features: dict) -> bytes:
    """A tf.Example; each value is (kind, list): kind 1 bytes, 2 float, 3 int64."""
    entries = b""
    for key, (kind, values) in features.items():
        if kind == 1:
            lst = b"".join(field(1, v) for v in values)
        elif kind == 2:
            lst = field(1, b"".join(struct.pack("<f", v) for v in values))
        else:
            lst = field(1, b"".join(varint(v & (2**64 - 1)) for v in values))
        entries += field(1, field(1, key.encode()) + field(2, field(kind, lst)))
    return field(1, entries)


def image_example(jpeg: bytes, label: int, text: bytes = b"daisy") -> dict:
    return {
        "image/encoded": (1, [jpeg]),
        "image/class/label": (3, [label]),
        "image/class/text": (1, [text]),
        "image/height": (3, [75]),
        "image/width": (3, [75]),
    }


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The good JPEG with its frame header (SOF0/SOF2) claiming another size."""
    out = bytearray(jpeg)
    i = 2
    while i + 9 < len(out):
        if out[i] != 0xFF:
            break
        marker, length = out[i + 1], struct.unpack(">H", out[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            out[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(out)
        i += 2 + length
    raise SystemExit("no frame header in the good JPEG")


def safetensors(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


class Corpus:
    def __init__(self, out: Path):
        self.out = out
        self.entries = []

    def add(self, stage: str, kind: str, name: str, data=None, special=None):
        path = self.out / stage / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if special:
            special(path)
        else:
            path.write_bytes(data)
        self.entries.append({"stage": stage, "kind": kind, "name": name})

    def save(self):
        (self.out / "manifest.json").write_text(json.dumps(self.entries, indent=1))


def images(c: Corpus, jpeg: bytes):
    """Image files, under a label folder, for ingest and classify."""
    for stage in ("ingest/daisy", "classify"):
        c.add(stage, "empty file", "empty.jpg", b"")
        c.add(stage, "text named .jpg", "notes.jpg", b"this is text, not a photo\n")
        c.add(stage, "truncated JPEG", "truncated.jpg", jpeg[: len(jpeg) // 3])
        c.add(stage, "random bytes", "noise.jpg", os.urandom(4096))
        c.add(stage, "JPEG header claiming 65000x65000", "bomb.jpg", jpeg_with_size(jpeg, 65000, 65000))
        c.add(stage, "PNG header claiming 100000x100000", "bomb.png", png_header(100000, 100000))
        c.add(stage, "PNG without data", "cut.png", png_header(64, 64)[:40])
        c.add(stage, "FIFO", "pipe.jpg", special=os.mkfifo)
        c.add(stage, "dangling symbolic link", "dangling.jpg", special=lambda p: p.symlink_to(p.parent / "absent.jpg"))
        c.add(stage, "symbolic link loop", "loop.jpg", special=lambda p: p.symlink_to(p))
    c.add("classify", "directory named like an image", "folder.jpg", special=lambda p: p.mkdir())
    # A sparse file far over ingest.max_image_bytes (takes no disk).
    c.add("ingest/daisy", "64 GiB sparse file", "huge.jpg", special=lambda p: open(p, "wb").truncate(64 << 30))
    c.add("ingest/daisy", "symbolic link out of the source folder", "outside.jpg",
          special=lambda p: p.symlink_to("/etc/hostname"))


def records(c: Corpus, jpeg: bytes):
    """TFRecord files, for `inception records verify` and as shards for preprocess."""
    good = tfrecord(example(image_example(jpeg, 1)))
    c.add("records", "a JPEG, not a TFRecord file", "photo.tfrecord", jpeg)
    c.add("records", "length checksum wrong", "length-crc.tfrecord", good[:8] + b"\0\0\0\0" + good[12:])
    c.add("records", "data checksum wrong", "data-crc.tfrecord", good[:-4] + b"\0\0\0\0")
    c.add("records", "cut inside a record", "cut.tfrecord", good[: len(good) // 2])
    huge = struct.pack("<Q", 1 << 60)
    c.add("records", "length of 2^60 bytes", "huge-length.tfrecord", huge + struct.pack("<I", masked_crc(huge)) + b"x" * 64)
    c.add("records", "not a tf.Example", "not-example.tfrecord", tfrecord(b"\xff\xff\xff\xff garbage"))
    flood = {"image/encoded": (1, [jpeg]), "image/class/label": (3, [1]), "flood": (1, [b""] * ((1 << 20) + 1))}
    c.add("records", "2^20+1 empty values", "flood.tfrecord", tfrecord(example(flood)))
    wrong = image_example(jpeg, 1)
    wrong["image/class/label"] = (1, [b"1"])
    c.add("records", "label of the wrong type", "wrong-type.tfrecord", tfrecord(example(wrong)))
    c.add("records", "image that is not an image", "bad-image.tfrecord", tfrecord(example(image_example(b"nope", 1))))


def batches(c: Corpus, size: int):
    """Batch objects for the trainer (the test queues a message for each)."""
    def batch(n, s, labels, images=None):
        img = images if images is not None else bytes(n * s * s * 3)
        lab = b"".join(struct.pack("<q", l) for l in labels)
        header = {
            "images": {"dtype": "U8", "shape": [n, s, s, 3], "data_offsets": [0, len(img)]},
            "labels": {"dtype": "I64", "shape": [len(labels)], "data_offsets": [len(img), len(img) + len(lab)]},
        }
        return safetensors(header, img + lab)
    c.add("batches", "no images", "empty.safetensors", batch(0, size, []))
    c.add("batches", "images of another size", "small.safetensors", batch(2, size - 1, [1, 1]))
    c.add("batches", "more images than pipeline.batch_size", "large.safetensors", batch(9, size, [1] * 9))
    c.add("batches", "label out of range", "label.safetensors", batch(2, size, [1, 99]))
    c.add("batches", "negative label", "negative.safetensors", batch(2, size, [1, -1]))
    c.add("batches", "header of 2^62 bytes", "header.safetensors", struct.pack("<Q", 1 << 62) + b"{}")
    c.add("batches", "shape claiming 2^40 images", "claims.safetensors", safetensors(
        {"images": {"dtype": "U8", "shape": [1 << 40, size, size, 3], "data_offsets": [0, 3]},
         "labels": {"dtype": "I64", "shape": [1 << 40], "data_offsets": [3, 11]}}, bytes(11)))
    c.add("batches", "not JSON", "garbage.safetensors", struct.pack("<Q", 8) + b"not json" + bytes(8))
    c.add("batches", "float images", "dtype.safetensors", safetensors(
        {"images": {"dtype": "F32", "shape": [1, 1, 1, 3], "data_offsets": [0, 12]},
         "labels": {"dtype": "I64", "shape": [1], "data_offsets": [12, 20]}}, bytes(20)))


def messages(c: Corpus):
    """Raw NATS payloads; the test publishes each on the subject its name says."""
    shard = lambda uri, records: field(1, b"flowers") + field(2, b"train") + field(3, uri) + field_varint(4, records)
    c.add("messages", "not a protobuf", "shards-garbage.bin", b"\xff" * 32)
    c.add("messages", "2^64-1 records", "shards-records.bin", shard(b"datasets/flowers/train-00000-of-00002", 2**64 - 1))
    c.add("messages", "shard outside the dataset", "shards-outside.bin", shard(b"../../etc/passwd", 3))
    c.add("messages", "a validation shard as train", "shards-validation.bin", shard(b"datasets/flowers/validation-00000-of-00001", 3))
    c.add("messages", "oversized (100 KiB)", "shards-oversized.bin", shard(b"datasets/flowers/train-" + b"x" * 100_000, 1))
    c.add("messages", "batch outside its folder", "batches-outside.bin", field(1, b"../checkpoints/default/model.ckpt-1.json"))
    c.add("messages", "batch object missing", "batches-missing.bin", field(1, b"batches/flowers/absent.safetensors"))
    c.add("messages", "not a protobuf", "batches-garbage.bin", b"\xff" * 32)
    ckpt = lambda step, meta: field(1, b"default") + field_varint(2, step) + field(4, meta)
    c.add("messages", "not a protobuf", "checkpoints-garbage.bin", b"\xff" * 32)
    c.add("messages", "metadata outside the run", "checkpoints-outside.bin", ckpt(7, b"../../etc/passwd"))
    c.add("messages", "metadata missing", "checkpoints-missing.bin", ckpt(8, b"checkpoints/default/model.ckpt-8.json"))


def checkpoints(c: Corpus):
    """Checkpoint metadata for the evaluator and classify (steps 90..)."""
    meta = lambda step, **over: json.dumps({
        "step": step, "labels": ["daisy", "dandelion", "roses", "sunflowers", "tulips"],
        "model": {"image_size": 75, "num_classes": 6, "depth_multiplier": 0.1, "min_depth": 8, "dropout": 0.2},
        "weights": f"checkpoints/default/model.ckpt-{step}.safetensors", **over}).encode()
    c.add("checkpoints", "not JSON", "model.ckpt-90.json", b"not json")
    c.add("checkpoints", "num_classes of 10^9", "model.ckpt-91.json",
          meta(91, model={"image_size": 75, "num_classes": 10**9, "depth_multiplier": 0.1, "min_depth": 8, "dropout": 0.2}))
    c.add("checkpoints", "image_size of 100000", "model.ckpt-92.json",
          meta(92, model={"image_size": 100000, "num_classes": 6, "depth_multiplier": 0.1, "min_depth": 8, "dropout": 0.2}))
    c.add("checkpoints", "weights missing", "model.ckpt-93.json", meta(93))
    c.add("checkpoints", "weights not safetensors", "model.ckpt-94.json", meta(94))
    c.add("checkpoints", "weights garbage", "model.ckpt-94.safetensors", b"\x10" + bytes(7) + b"garbage!")
    c.add("checkpoints", "labels not matching num_classes", "model.ckpt-95.json", meta(95, labels=["only"]))
    c.add("checkpoints", "metadata of 40 MiB", "model.ckpt-96.json", special=lambda p: open(p, "wb").truncate(40 << 20))


SETTINGS = [
    ("PIPELINE__BATCH_SIZE", "8.5", "pipeline.batch_size"),
    ("TRAIN__INITIAL_LEARNING_RATE", "nan", "train.initial_learning_rate"),
    ("MODEL__IMAGE_SIZE", "100000", "model.image_size"),
    ("PIPELINE__QUEUE_CAPACITY", "-1", "pipeline.queue_capacity"),
    ("TRAIN__MAX_STEPS", "1e30", "train.max_steps"),
    ("PIPELINE__MAX_IMAGE_PIXELS", "true", "pipeline.max_image_pixels"),
    ("AUGMENT__FLIP_PROBABILITY", "inf", "augment.flip_probability"),
    ("NATS__MAX_MESSAGE_BYTES", "99999999999", "nats.max_message_bytes"),
    ("PIPELINE__STALL_AFTER", "soon", "pipeline.stall_after"),
]


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    out, jpeg = Path(sys.argv[1]), Path(sys.argv[2]).read_bytes()
    c = Corpus(out)
    images(c, jpeg)
    records(c, jpeg)
    batches(c, 75)
    messages(c)
    checkpoints(c)
    for env, value, key in SETTINGS:
        c.entries.append({"stage": "settings", "kind": f"{key} = {value}", "name": env, "value": value, "key": key})
    c.save()
    kinds = {}
    for e in c.entries:
        kinds[e["stage"].split("/")[0]] = kinds.get(e["stage"].split("/")[0], 0) + 1
    print(f"{len(c.entries)} hostile inputs in {out}: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))


if __name__ == "__main__":
    main()
