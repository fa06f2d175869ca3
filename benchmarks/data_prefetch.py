"""What reading the data costs a training iteration, with and without prefetching (``data_param.prefetch``).

    python benchmarks/data_prefetch.py                      # about half a minute
    python benchmarks/data_prefetch.py --blocks 5 --iterations 8

In a temporary folder it writes ``--images`` 40 x 40 colour images (smooth random
fields with noise) three ways: JPEG files and their list for ``ImageData``; an LMDB of
raw uint8 datums for ``Data`` (as ``netdef convert_cifar`` writes them); an LMDB of
encoded JPEG datums for ``Data`` (as ``netdef convert_imageset --encoded`` writes them).
Each source feeds cifar10_quick's TRAIN net (``models/cifar10_quick``, batch 100) with
``transform_param { crop_size: 32 mirror: true mean_value ... scale ... }``.

For every source, ``prefetch: 0`` (each batch read in forward) and ``prefetch: 4``
(Caffe's default: read ahead in a background thread) run in alternating blocks: a fresh
net, one untimed iteration, then ``--iterations`` timed ones. An iteration is forward and
backward of the whole net; the data layer's forward is timed on its own too (with
prefetching it is the wait for the batch plus the crop and mirror). The table gives the
medians over all timed iterations, and the data layer's share of the iteration.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nets import DATA_TYPES, ROOT  # noqa: E402

import netdef  # noqa: E402
from netdef import threads  # noqa: E402
from netdef.datasets.datum import datum_bytes, format_key  # noqa: E402
from netdef.datasets.images import encode_pixels  # noqa: E402
from netdef.datasets.writers import LMDBWriter  # noqa: E402
from netdef.net import filter_net  # noqa: E402
from netdef.proto import load_net, parse_text  # noqa: E402
from netdef.proto import netdef_pb2 as pb  # noqa: E402

BATCH = 100
SIZE = 40
TRANSFORM = "crop_size: 32 mirror: true mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.0078125"
SOURCES = {
    "ImageData, JPEG files": 'type: "ImageData" image_data_param {{ source: "{dir}/list.txt" batch_size: {b} }}',
    "Data, LMDB raw": 'type: "Data" data_param {{ source: "{dir}/raw_lmdb" backend: LMDB batch_size: {b} }}',
    "Data, LMDB JPEG": 'type: "Data" data_param {{ source: "{dir}/jpeg_lmdb" backend: LMDB batch_size: {b} }}',
}


def make_images(count: int, seed: int = 0) -> numpy.ndarray:
    """``count`` SIZE x SIZE BGR images (C x H x W, uint8): smooth random fields plus noise, like photos to JPEG."""
    rng = numpy.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, 3, 5, 5))
    smooth = coarse.repeat(SIZE // 5, axis=2).repeat(SIZE // 5, axis=3)
    return numpy.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(numpy.uint8)


def write_sources(folder: str, count: int) -> None:
    """The three sources of the same images in ``folder``."""
    images = make_images(count)
    labels = numpy.arange(count) % 10
    with open(os.path.join(folder, "list.txt"), "w") as listing:
        for k, (pixels, label) in enumerate(zip(images, labels)):
            name = os.path.join(folder, f"{k:05d}.jpg")
            with open(name, "wb") as f:
                f.write(encode_pixels(pixels, "jpg"))
            listing.write(f"{name} {label}\n")
    with LMDBWriter(os.path.join(folder, "raw_lmdb")) as raw, LMDBWriter(os.path.join(folder, "jpeg_lmdb")) as jpeg:
        for k, (pixels, label) in enumerate(zip(images, labels)):
            raw.put(format_key(k), datum_bytes(pixels, int(label)))
            jpeg.put(format_key(k), datum_bytes(label=int(label), encoded=encode_pixels(pixels, "jpg")))


def net_param(source: str, prefetch: int) -> pb.NetParameter:
    """cifar10_quick's TRAIN net with ``source`` as its data layer."""
    param = filter_net(load_net(os.path.join(ROOT, "models", "cifar10_quick", "train_val.prototxt")))
    out = pb.NetParameter(name=param.name)
    out.state.phase = pb.TRAIN
    data = parse_text(
        f'name: "data" top: "data" top: "label" {source} '
        f"data_param {{ prefetch: {prefetch} }} transform_param {{ {TRANSFORM} }}",
        pb.LayerParameter(),
    )
    out.layer.add().CopyFrom(data)
    for layer in param.layer:
        if layer.type not in DATA_TYPES:
            out.layer.add().CopyFrom(layer)
    return out


def run_block(param: pb.NetParameter, iterations: int) -> tuple[list[float], list[float]]:
    """Milliseconds of each timed iteration (forward + backward) and of the data layer's forward in it."""
    netdef.set_random_seed(1)
    net = netdef.Net(param, netdef.TRAIN)
    whole, data = [], []
    try:
        for it in range(iterations + 1):
            t0 = time.perf_counter()
            net.forward_from_to(0, 0)
            t1 = time.perf_counter()
            net.forward_from_to(1)
            net.backward_from_to()
            t2 = time.perf_counter()
            if it:  # the first iteration of a block warms up (and, prefetching, starts the thread)
                whole.append((t2 - t0) * 1e3)
                data.append((t1 - t0) * 1e3)
    finally:
        net.layers[0].close()  # no reading ahead while the other block runs
    return whole, data


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=500, help="images per source (default 500: 5 batches)")
    ap.add_argument("--blocks", type=int, default=4, help="alternating blocks per source and setting (default 4)")
    ap.add_argument("--iterations", type=int, default=6, help="timed iterations per block (default 6)")
    ap.add_argument("--threads", type=int, default=None, help="BLAS threads (default: netdef's policy)")
    args = ap.parse_args(argv)
    threads.apply_policy(args.threads)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; {threads.describe()}")
    print(f"cifar10_quick TRAIN, batch {BATCH}, {SIZE}x{SIZE} images, transform_param {{ {TRANSFORM} }}")
    print(f"medians of {args.blocks} alternating blocks x {args.iterations} iterations, in ms\n")
    settings = (0, 4)
    with tempfile.TemporaryDirectory(prefix="netdef-prefetch-") as folder:
        write_sources(folder, args.images)
        rows = []
        for name, template in SOURCES.items():
            source = template.format(dir=folder, b=BATCH)
            params = {p: net_param(source, p) for p in settings}
            times: dict[int, tuple[list[float], list[float]]] = {p: ([], []) for p in settings}
            for _ in range(args.blocks):
                for p in settings:
                    whole, data = run_block(params[p], args.iterations)
                    times[p][0].extend(whole)
                    times[p][1].extend(data)
            for p in settings:
                whole, data = (statistics.median(t) for t in times[p])
                rows.append((name, p, whole, data))
    print(f"| {'source':<22} | prefetch | iteration (fwd+bwd) | data layer forward | data share |")
    print(f"|{'-' * 24}|----------|---------------------|--------------------|------------|")
    for name, p, whole, data in rows:
        print(f"| {name:<22} | {p:>8} | {whole:>19.1f} | {data:>18.2f} | {data / whole:>10.1%} |")


if __name__ == "__main__":
    main()
