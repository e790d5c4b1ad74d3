"""Device footprint: what running a ``.satc`` with the runtime alone costs (issue 24).

Writes ``results/device.json``. For each artifact given (``NAME=PATH``), every measurement
runs in a fresh process of a virtual environment holding only ``satcompress-runtime``
(numpy, onnx, onnxruntime, Pillow; built from ``runtime/``, torch cannot even be imported):

* ``install``: bytes on disk of that environment's packages against the full install's
  (``satcompress`` and its required dependencies, from the installed files' sizes) and of
  both whole ``site-packages`` folders;
* ``cold_start_s``: process start to the first prediction printed (interpreter start,
  imports, verify + decode of the ``.satc``, ONNX Runtime session at 1 thread, one image
  file), median of ``--repeats`` fresh processes (files in the OS cache);
* ``decode_ms``: verifying (SHA-256) and rebuilding the ONNX graph from the ``.satc``;
* ``peak_rss_bytes``: peak resident memory (``ru_maxrss``) of a process that loads the
  model and predicts batches of 1 or 64 real images, against the rebuilt ONNX model's bytes,
  with the resident memory after the imports alone (the interpreter and libraries);
* ``latency_ms_per_image``: median over timed calls after a warm-up, at 1 and 2 ONNX
  Runtime threads, batch 1 and 64 (per image).

Targets (issue 24): runtime environment under 5% of the full install; cold start under 2 s
for the 2-bit ResNet-18; peak memory under 4x the rebuilt ONNX model's bytes.

The artifacts of ``results/device.json`` (ResNet-18: the shared checkpoint; MobileNetV2: no
trained checkpoint exists here, so an untrained one, measured for its footprint only)::

    R18=../shared/models/resnet18_eurosat64.safetensors
    DATA="--dataset eurosat --data-dir ../shared/data"
    satcompress export --checkpoint $R18 --image-size 64 --output /tmp/dev/resnet18-fp32.satc
    satcompress quantize --method ptq --checkpoint $R18 $DATA --run-dir /tmp/r18-ptq --no-latency
    satcompress quantize --method qat --bits 2 --epochs 1 --limit-batches 20 --checkpoint $R18 \\
        $DATA --run-dir /tmp/r18-w2 --no-latency                       # 6.5 min on 2 cores
    satcompress train --model mobilenet_v2 --no-pretrained $DATA --epochs 1 --limit-batches 30 \\
        --run-dir /tmp/mnv2 --no-eval
    satcompress export --checkpoint /tmp/mnv2 --output /tmp/dev/mobilenet_v2-fp32.satc
    satcompress quantize --method ptq --checkpoint /tmp/mnv2 --run-dir /tmp/mnv2-ptq --no-eval
    satcompress quantize --method qat --bits 2 --epochs 0 --checkpoint /tmp/mnv2 \\
        --run-dir /tmp/mnv2-w2 --no-eval
    python benchmarks/device.py --repeats 5 \\
        --artifact resnet18-fp32=/tmp/dev/resnet18-fp32.satc \\
        --artifact resnet18-ptq-int8=/tmp/r18-ptq/model.satc \\
        --artifact resnet18-qat-w2=/tmp/r18-w2/model.satc \\
        --artifact mobilenet_v2-fp32=/tmp/dev/mobilenet_v2-fp32.satc \\
        --artifact mobilenet_v2-ptq-int8=/tmp/mnv2-ptq/model.satc \\
        --artifact mobilenet_v2-qat-w2=/tmp/mnv2-w2/model.satc   # + --note NAME=TEXT each

The process runs ``--repeats`` children per measurement; on a shared CPU the latencies
move with the other load (recorded as the load average before and after). The 2-bit
ResNet-18 and the MobileNetV2 rows were the quick versions the footprint needs: their
accuracy is not the point (the ResNet-18 QAT still scored 92.72% on test after 20 batches).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_INSTALL_RATIO = 0.05
TARGET_COLD_START_S = 2.0
TARGET_PEAK_OVER_ONNX = 4.0

# Run in the runtime environment: argv = mode, artifact, then mode-specific values.
CHILD = r"""
import json, os, resource, sys, time
T0 = float(os.environ["DEVICE_T0"])
mode, artifact = sys.argv[1], sys.argv[2]

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

if mode == "cold":
    from satcompress.runtime import Runtime
    t_import = time.time()
    model = Runtime(artifact, threads=int(sys.argv[4]))
    t_load = time.time()
    (prediction,) = model.predict([sys.argv[3]])
    print(prediction.label, flush=True)
    t_first = time.time()
    print(json.dumps({"total_s": t_first - T0, "imports_s": t_import - T0,
                      "decode_s": model.decode_seconds, "session_s": model.session_seconds,
                      "load_s": t_load - t_import, "first_predict_s": t_first - t_load}))
elif mode == "memory":
    import numpy as np
    from PIL import Image
    from satcompress.runtime import Runtime
    from satcompress.runtime.images import load_image
    batch, files = int(sys.argv[3]), sys.argv[4:]
    base = rss()
    model = Runtime(artifact, threads=1)
    loaded = rss()
    images = np.stack([load_image(f, model.image_size) for f in files[:batch]])
    for _ in range(3):
        model.predict_batch(images)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"after_imports": base, "after_load": loaded, "after_predict": rss(),
                      "peak": peak}))
elif mode == "latency":
    import numpy as np
    from satcompress.runtime import Runtime
    from satcompress.runtime.images import load_image
    threads, repeats, files = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
    model = Runtime(artifact, threads=threads)
    images = np.stack([load_image(f, model.image_size) for f in files[:64]])
    out = {}
    for batch in (1, 64):
        x = images[:batch]
        for _ in range(3):
            model.predict_batch(x)
        times = []
        for _ in range(repeats if batch == 64 else repeats * 10):
            start = time.perf_counter()
            model.predict_batch(x)
            times.append(time.perf_counter() - start)
        out[f"bs{batch}"] = sorted(times)[len(times) // 2] * 1000 / batch
    print(json.dumps(out))
elif mode == "decode":
    import hashlib
    from satcompress.runtime.satc import load_artifact
    repeats = int(sys.argv[3])
    total, verify = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        loaded = load_artifact(artifact)
        model = loaded.onnx_model()
        total.append(time.perf_counter() - start)
        blob = open(artifact, "rb").read()
        start = time.perf_counter()
        hashlib.sha256(blob).digest()
        verify.append(time.perf_counter() - start)
    onnx_bytes = len(model.SerializeToString())
    print(json.dumps({"decode_ms": sorted(total)[len(total) // 2] * 1000,
                      "sha256_ms": sorted(verify)[len(verify) // 2] * 1000,
                      "onnx_bytes": onnx_bytes}))
elif mode == "sizes":
    import importlib.metadata as md, re
    def closure(name):
        seen, todo = {}, [name]
        while todo:
            dist_name = re.split(r"[ ;<>=!~\[]", todo.pop())[0]
            key = dist_name.lower().replace("_", "-")
            if key in seen:
                continue
            try:
                dist = md.distribution(dist_name)
            except md.PackageNotFoundError:
                continue
            size = 0
            for f in dist.files or []:
                try:
                    size += os.stat(dist.locate_file(f)).st_size
                except OSError:
                    pass
            seen[key] = size
            todo += [r for r in dist.requires or [] if "extra ==" not in r]
        return seen
    print(json.dumps(closure(artifact)))
"""


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and write the results file."""
    args = parse_args(argv)
    python = prepare_venv(args.venv, args.reinstall)
    images = sorted(p for p in Path(args.images).rglob("*.jpg"))[:: args.image_step][:64]
    if len(images) < 64:
        raise SystemExit(f"need 64 images under {args.images}, found {len(images)}")
    result: dict[str, Any] = {
        "benchmark": "device",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu(),
        "load_average_before": list(os.getloadavg()),
        "environment": child_versions(python),
        "install": install_sizes(python, args.venv),
        "rows": [],
    }
    notes = dict(note.split("=", 1) for note in args.note)
    for spec in args.artifact:
        name, _, path = spec.partition("=")
        print(f"{name}: measuring {path}", file=sys.stderr)
        row = measure(name, Path(path), python, images, args.repeats)
        result["rows"].append({**row, "note": notes.get(name, "")})
    result["load_average_after"] = list(os.getloadavg())
    result["targets"] = targets(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", action="append", required=True, help="NAME=PATH.satc")
    parser.add_argument("--note", action="append", default=[], help="NAME=TEXT for a row")
    parser.add_argument("--images", default=str(ROOT.parent / "shared/data/EuroSAT/2750"))
    parser.add_argument("--image-step", type=int, default=97, help="take every Nth image")
    parser.add_argument("--venv", type=Path, default=Path("/tmp/rtvenv"))
    parser.add_argument(
        "--reinstall", action=argparse.BooleanOptionalAction, default=True,
        help="rebuild runtime/ into the venv first (default), so this tree is measured",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "results" / "device.json"))
    return parser.parse_args(argv)


def prepare_venv(venv: Path, reinstall: bool) -> Path:
    """The runtime environment's python: created (``pip install ./runtime``) if missing."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT / "runtime")],
                       check=True)  # fmt: skip
    elif reinstall:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", "-w", tmp, str(ROOT / "runtime")],
                           check=True)  # fmt: skip
            (wheel,) = Path(tmp).glob("*.whl")
            subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps",
                            "--force-reinstall", str(wheel)], check=True)  # fmt: skip
    return python


def child(python: Path, *args: Any, env: dict[str, str] | None = None) -> tuple[str, float]:
    """Run CHILD in the runtime environment; return its stdout and the start time."""
    start = time.time()
    done = subprocess.run(
        [str(python), "-c", CHILD, *map(str, args)], capture_output=True, text=True,
        env={**os.environ, "DEVICE_T0": repr(start), **(env or {})}, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed:\n{done.stderr[-3000:]}")
    return done.stdout, start


def measure(name: str, path: Path, python: Path, images: list[Path], repeats: int) -> dict:
    """Every per-artifact measurement."""
    from satcompress.runtime.satc import artifact_format, read_manifest

    manifest = read_manifest(path)
    record_path = path.parent / "record.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    decode = json.loads(child(python, "decode", path, repeats)[0])
    colds = []
    for _ in range(repeats):
        out, _ = child(python, "cold", path, images[0], 1)
        colds.append(json.loads(out.splitlines()[-1]))
    memory = {}
    for batch in (1, 64):
        out, _ = child(python, "memory", path, batch, *images)
        memory[f"bs{batch}"] = json.loads(out)
    latency = {}
    for threads in (1, 2):
        out, _ = child(python, "latency", path, threads, repeats * 4, *images)
        latency[f"threads{threads}"] = json.loads(out)
    onnx_bytes = decode["onnx_bytes"]
    return {
        "name": name,
        "artifact": str(path),
        "format": artifact_format(manifest),
        "size_bytes": path.stat().st_size,
        "onnx_bytes": onnx_bytes,
        "test_accuracy": record.get("accuracy"),
        "decode_ms": round(decode["decode_ms"], 1),
        "sha256_ms": round(decode["sha256_ms"], 1),
        "cold_start_s": {
            "median": round(statistics.median(c["total_s"] for c in colds), 3),
            "min": round(min(c["total_s"] for c in colds), 3),
            "parts_median_s": {
                key: round(statistics.median(c[key] for c in colds), 3)
                for key in ("imports_s", "decode_s", "session_s", "first_predict_s")
            },
        },
        "peak_rss_bytes": {k: v["peak"] for k, v in memory.items()},
        "rss_after_imports_bytes": memory["bs1"]["after_imports"],
        "peak_over_onnx": {k: round(v["peak"] / onnx_bytes, 2) for k, v in memory.items()},
        "model_rss_over_onnx": {
            k: round((v["peak"] - v["after_imports"]) / onnx_bytes, 2) for k, v in memory.items()
        },
        "latency_ms_per_image": {
            t: {b: round(ms, 3) for b, ms in v.items()} for t, v in latency.items()
        },
    }


def install_sizes(python: Path, venv: Path) -> dict[str, Any]:
    """Bytes of the runtime environment against the full install's."""
    runtime = json.loads(child(python, "sizes", "satcompress-runtime")[0])
    full = json.loads(
        subprocess.run(
            [sys.executable, "-c", CHILD, "sizes", "satcompress"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "DEVICE_T0": "0"},
        ).stdout  # fmt: skip
    )
    venv_site = next(venv.glob("lib/python*/site-packages"))
    full_site = Path(sysconfig.get_paths()["purelib"])
    out = {
        "runtime_packages_bytes": sum(runtime.values()),
        "full_packages_bytes": sum(full.values()),
        "runtime_packages": runtime,
        "full_largest_packages": dict(sorted(full.items(), key=lambda kv: -kv[1])[:8]),
        "runtime_site_packages_bytes": du(venv_site),
        "full_site_packages_bytes": du(full_site),
        "runtime_venv_bytes": du(venv),
    }
    out["ratio"] = round(out["runtime_packages_bytes"] / out["full_packages_bytes"], 4)
    out["site_packages_ratio"] = round(
        out["runtime_site_packages_bytes"] / out["full_site_packages_bytes"], 4
    )
    return out


def du(path: Path) -> int:
    """Bytes on disk under ``path`` (``du -sb``)."""
    done = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


def cpu() -> dict[str, Any]:
    """CPU model, core count and the int8 instructions that matter to ONNX Runtime."""
    model, flags = None, set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return {
        "model": model,
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni"}),
        "avx2": "avx2" in flags,
    }


def child_versions(python: Path) -> dict[str, str]:
    code = ("import json, platform, numpy, onnx, onnxruntime, PIL; print(json.dumps({"
            "'python': platform.python_version(), 'numpy': numpy.__version__, "
            "'onnx': onnx.__version__, 'onnxruntime': onnxruntime.__version__, "
            "'pillow': PIL.__version__}))")  # fmt: skip
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Each target of issue 24: the measured value, the limit, met or missed and by how much."""
    out: dict[str, Any] = {}
    ratio = result["install"]["ratio"]
    out["install_under_5pct_of_full"] = _verdict(ratio, TARGET_INSTALL_RATIO)
    for row in result["rows"]:
        if row["name"].startswith("resnet18") and row["format"].startswith("artifact-int2"):
            cold = row["cold_start_s"]["median"]
            out[f"cold_start_under_2s[{row['name']}]"] = _verdict(cold, TARGET_COLD_START_S)
        for batch, value in row["peak_over_onnx"].items():
            key = f"peak_rss_under_4x_onnx[{row['name']},{batch}]"
            out[key] = _verdict(value, TARGET_PEAK_OVER_ONNX)
    return out


def _verdict(value: float, limit: float) -> dict[str, Any]:
    return {"value": value, "limit": limit, "met": value < limit,
            "missed_by": None if value < limit else round(value / limit, 2)}  # fmt: skip


def table(result: dict[str, Any]) -> str:
    """The README's Markdown table."""
    lines = [
        "| artifact | .satc | rebuilt ONNX | decode | cold start | peak RSS bs1 / bs64 "
        "| ms/image 1 thread bs1 / bs64 | 2 threads bs1 / bs64 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        mb = 1e6
        lat = r["latency_ms_per_image"]
        lines.append(
            f"| {r['name']} | {r['size_bytes'] / mb:.2f} MB | {r['onnx_bytes'] / mb:.1f} MB "
            f"| {r['decode_ms']:.0f} ms | {r['cold_start_s']['median']:.2f} s "
            f"| {r['peak_rss_bytes']['bs1'] / mb:.0f} / {r['peak_rss_bytes']['bs64'] / mb:.0f} MB "
            f"| {lat['threads1']['bs1']:.2f} / {lat['threads1']['bs64']:.2f} "
            f"| {lat['threads2']['bs1']:.2f} / {lat['threads2']['bs64']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
