"""Backbones: the registry and the one factory that builds them.

    >>> from transfer_engine.backbones import create_backbone, list_backbones
    >>> "resnet50" in list_backbones()                        # doctest: +SKIP
    >>> bb = create_backbone("resnet50", weights="none")      # doctest: +SKIP
    >>> bb.feature_dim                                        # doctest: +SKIP
    2048
"""

from __future__ import annotations

from transfer_engine.backbones.spec import Backbone, BackboneSpec, PreprocessSpec
from transfer_engine.registry import Registry

GROUP = "transfer_engine.backbones"

registry: Registry[BackboneSpec] = Registry(GROUP, "backbone", BackboneSpec)


def list_backbones(pattern: str | None = None) -> list[str]:
    """Names of all installed backbones, sorted; `pattern` filters with shell wildcards ("resnet*")."""
    names = registry.names()
    if pattern:
        import fnmatch

        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def get_backbone_spec(name: str) -> BackboneSpec:
    """The declaration of backbone `name`.

    Raises:
        UnknownNameError: no installed plugin provides it (the message lists close names).
        DuplicateNameError: two installed distributions provide it.
    """
    return registry.get(name)


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Register a backbone from Python code (a notebook, an application); installed plugins use entry points."""
    return registry.register(spec)


def create_backbone(name: str, weights: str | None = "DEFAULT", *, seed: int = 0) -> Backbone:
    """Build backbone `name` in eval mode, ready to produce pooled features.

    Args:
        name: a registered backbone name (`te backbones` lists them).
        weights: "DEFAULT" (or None) for the backbone's default pretrained weights, another weights name
            it declares, "none" for random initialization, or a path to a local state dict.
        seed: the seed of a random initialization (also used when the backbone has no pretrained weights).

    Returns:
        A `Backbone` holding the model, its preprocessing and a description of its weights.

    Raises:
        UnknownNameError / DuplicateNameError: see `get_backbone_spec`.
        UsageError: `weights` is neither a declared name, "none" nor an existing file.
        WeightsError: the weights cannot be downloaded, read or do not fit the model.
        PluginError: the plugin's build raised, or returned no torch.nn.Module (its fault, named as such).
    """
    from transfer_engine.backbones import weights as w
    from transfer_engine.registry import call_build

    spec, record = registry.lookup(name)
    resolved = w.resolve_weights_name(spec, weights)

    def build(call):
        return call_build("backbone", spec.name, record, call)

    used_seed: int | None = None
    if resolved is None:
        model, label, used_seed = build(lambda: w.build_random(spec, seed)), w.RANDOM, seed
    elif resolved in spec.weights:
        model, label = build(lambda: w.build_pretrained(spec, resolved)), resolved
    else:
        from pathlib import Path

        path = str(Path(resolved).expanduser().resolve())
        model = build(lambda: w.build_random(spec, seed))
        w.load_state_dict_file(spec, model, path)
        label = f"file:{path}"
    model.eval()
    preprocess = spec.preprocess_for(resolved if resolved in spec.weights else None)
    return Backbone(spec=spec, model=model, weights=label, preprocess=preprocess,
                    plugin=record.distribution, seed=used_seed)


__all__ = [
    "Backbone",
    "BackboneSpec",
    "PreprocessSpec",
    "create_backbone",
    "get_backbone_spec",
    "list_backbones",
    "register_backbone",
    "registry",
]
