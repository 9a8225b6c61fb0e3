"""`te info`: versions, the compiled extension and devices, for bug reports."""

from __future__ import annotations

import platform

import click

from transfer_engine.cli._common import emit_json, json_option


@click.command("info")
@json_option
def info(as_json: bool) -> None:
    """Show te, torch and onnxruntime versions, the C++/CUDA extension and the devices te can use."""
    import torch

    from transfer_engine import __version__, extension

    try:
        import onnxruntime

        ort = {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}
    except ImportError:
        ort = None
    report = {
        "te": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_threads": torch.get_num_threads(),
        "extension": extension.info(),
        "onnxruntime": ort,
    }
    if as_json:
        emit_json(report)
        return
    ext = report["extension"]
    ext_line = (
        f"loaded ({'C++ + CUDA' if ext['cuda_compiled'] else 'C++ only'}, {ext['openmp_max_threads']} OpenMP threads)"
        if ext["available"] else f"NOT available ({ext['error']}); using PyTorch fallbacks"
    )
    click.echo(f"te          {report['te']}")
    click.echo(f"python      {report['python']} on {report['platform']}")
    click.echo(f"torch       {report['torch']} (CUDA build: {report['torch_cuda'] or 'no'}; "
               f"GPUs: {', '.join(report['cuda_devices']) or 'none'})")
    click.echo(f"extension   {ext_line}")
    click.echo(f"onnxruntime {ort['version'] + ' ' + str(ort['providers']) if ort else 'not installed'}")
