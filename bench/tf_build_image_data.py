"""The TensorFlow side of scripts/bench-ingest.sh: what build_image_data.py
does per image (read the file, decode_jpeg to check it and get its size,
build the tf.Example, write it with TFRecordWriter), with its thread and
shard layout (np.linspace ranges), timed. Also makes the benchmark's images.

    python bench/tf_build_image_data.py generate DIR N     # N JPEGs ~500x375 in DIR/<label>/
    python bench/tf_build_image_data.py convert DIR OUT THREADS SHARDS
"""
import os
import sys
import threading
import time

import numpy as np
import tensorflow as tf

LABELS = ['daisy', 'dandelion', 'roses', 'sunflowers', 'tulips']


def generate(out, n):
    rng = np.random.default_rng(12345)
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        os.makedirs(os.path.join(out, label), exist_ok=True)
        h, w = 375, 500
        y, x = np.mgrid[0:h, 0:w]
        base = rng.integers(0, 256, size=3)
        img = np.stack([(x * (i % 7 + 1) + base[0]) % 256, (y * (i % 5 + 1) + base[1]) % 256,
                        ((x + y) // 3 + base[2]) % 256], axis=-1).astype(np.uint8)
        img = np.clip(img.astype(np.int16) + rng.integers(-20, 20, size=img.shape), 0, 255).astype(np.uint8)
        data = tf.io.encode_jpeg(img, quality=90).numpy()
        with open(os.path.join(out, label, '%s_%05d.jpg' % (label, i)), 'wb') as f:
            f.write(data)


def _int64(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))


def _bytes(v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def convert(src, out, threads, shards):
    files, labels, texts = [], [], []
    for i, label in enumerate(LABELS):
        d = os.path.join(src, label)
        for name in sorted(os.listdir(d)):
            files.append(os.path.join(d, name))
            labels.append(i + 1)
            texts.append(label)
    os.makedirs(out, exist_ok=True)
    spacing = np.linspace(0, len(files), threads + 1).astype(int)
    per_thread = shards // threads

    def work(t):
        edges = np.linspace(spacing[t], spacing[t + 1], per_thread + 1).astype(int)
        for s in range(per_thread):
            shard = t * per_thread + s
            path = os.path.join(out, 'train-%.5d-of-%.5d' % (shard, shards))
            with tf.io.TFRecordWriter(path) as writer:
                for i in range(edges[s], edges[s + 1]):
                    with open(files[i], 'rb') as f:
                        data = f.read()
                    image = tf.io.decode_jpeg(data, channels=3)
                    h, w = int(image.shape[0]), int(image.shape[1])
                    ex = tf.train.Example(features=tf.train.Features(feature={
                        'image/height': _int64(h), 'image/width': _int64(w),
                        'image/colorspace': _bytes(b'RGB'), 'image/channels': _int64(3),
                        'image/class/label': _int64(labels[i]), 'image/class/text': _bytes(texts[i].encode()),
                        'image/format': _bytes(b'JPEG'),
                        'image/filename': _bytes(os.path.basename(files[i]).encode()),
                        'image/encoded': _bytes(data)}))
                    writer.write(ex.SerializeToString())

    start = time.time()
    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.time() - start
    print('tensorflow %s: %d images in %.2f s = %.1f images/sec (%d threads)'
          % (tf.__version__, len(files), elapsed, len(files) / elapsed, threads))


if __name__ == '__main__':
    if sys.argv[1] == 'generate':
        generate(sys.argv[2], int(sys.argv[3]))
    else:
        convert(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
