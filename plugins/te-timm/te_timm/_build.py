"""Building a timm model for te, and finding its pretrained weights. Imported only to build a model.

Where weights come from, in order:
1. the user's Hugging Face hub cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
   `~/.cache/huggingface/hub`), where timm's own downloads land: loaded from the file, no network;
2. for weights timm only knows by URL, torch's hub checkpoint cache (`$TORCH_HOME/hub/checkpoints`);
3. otherwise timm downloads them (once, into the hub cache). Before trying, the host is probed: offline,
   huggingface_hub would retry for most of a minute; te says at once what is missing and what to do.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from transfer_engine.errors import WeightsError

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 5.0
OFFLINE_HINT = "pass --weights PATH (a local state dict) or --weights none (random init)"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache huggingface_hub uses, resolved from the environment now.

    Read at call time rather than from huggingface_hub.constants, which freeze it at import.
    """
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _hf_filenames(cfg: dict) -> list[str]:
    # timm's order (timm.models._hub.load_state_dict_from_hf): the safetensors alternative first.
    name = cfg.get("hf_hub_filename") or "pytorch_model.bin"
    if name.endswith(".safetensors"):
        return [name]
    safe = "model.safetensors" if name == "pytorch_model.bin" else name[: -len(".bin")] + ".safetensors"
    return [safe, name] if name.endswith(".bin") else [name]


def cached_weights_file(cfg: dict) -> tuple[Path, bool] | None:
    """The local file holding a pretrained cfg's weights, if it was downloaded before.

    Args:
        cfg: timm's pretrained cfg of `arch.tag`, as a dict.

    Returns:
        (path, from_hub) or None; from_hub tells a hub file (a plain state dict) from a URL download
        (which may need the model's custom loader, e.g. the .npz of the original ViTs).
    """
    from huggingface_hub import try_to_load_from_cache

    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        repo, _, revision = hub_id.partition("@")
        for filename in _hf_filenames(cfg):
            found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir(), revision=revision or None)
            if isinstance(found, str):  # otherwise None or a "known not to exist" marker
                return Path(found), True
    url = cfg.get("url")
    if url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if candidate.is_file():
            return candidate, False
    return None


def _source(cfg: dict) -> tuple[str, str]:
    """(what a download would fetch, the host it needs) for a cfg timm would download."""
    if cfg.get("hf_hub_id"):
        endpoint = os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT
        return f"{endpoint.rstrip('/')}/{cfg['hf_hub_id']}", urlparse(endpoint).hostname or "huggingface.co"
    return cfg["url"], urlparse(cfg["url"]).hostname or ""


def _unreachable(host: str) -> str | None:
    """Why `host` cannot be reached on port 443, or None when it can."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return "HF_HUB_OFFLINE is set"
    try:
        socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"{host} cannot be reached ({type(exc).__name__}: {exc})"
    return None


def build(arch: str, weights: str | None) -> nn.Module:
    """timm's `arch` with its classifier removed (`num_classes=0`): images -> pooled features.

    Args:
        arch: a timm architecture name.
        weights: one of its pretrained tags, or None for random initialization (te seeds the RNG).

    Returns:
        The model in eval mode.

    Raises:
        WeightsError: the weights are neither cached nor downloadable, or do not fit the model.
    """
    if weights is None:
        return timm.create_model(arch, pretrained=False, num_classes=0).eval()
    name = f"{arch}.{weights}"
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    local = cached_weights_file(cfg)
    if local is not None:
        path, from_hub = local
        # A hub file is a plain state dict even where the URL version needs a custom loader.
        overlay = {"file": str(path), **({"custom_load": False} if from_hub else {})}
        try:
            return timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay).eval()
        except Exception as exc:  # a damaged or foreign file: say which, and what to do
            raise WeightsError(f"the cached weights {str(path)!r} of timm {name!r} do not load "
                               f"({type(exc).__name__}: {_first_line(exc)}); delete the file to download "
                               f"them again, or {OFFLINE_HINT}") from exc
    where, host = _source(cfg)
    problem = _unreachable(host)
    if problem:
        raise WeightsError(f"the timm weights {name!r} are not in the Hugging Face cache ({hub_cache_dir()}) "
                           f"and cannot be downloaded from {where}: {problem}; download them once with network "
                           f"access (timm caches them), or {OFFLINE_HINT}")
    try:
        return timm.create_model(name, pretrained=True, num_classes=0).eval()
    except Exception as exc:
        raise WeightsError(f"could not get the timm weights {name!r} from {where} ({type(exc).__name__}: "
                           f"{_first_line(exc)}); {OFFLINE_HINT}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
