"""`--strategy lora`: low-rank adapters (Hu et al., LoRA) on a transformer backbone, through `peft`.

Each adapted linear layer W gets W + (alpha / rank) * B @ A with A (rank x in) and B (out x rank) trainable
and W frozen; B starts at zero, so the adapted model starts as the backbone (the --from head fits it).
What gets adapters is chosen by role, not by a per-model table (`LORA_TARGETS`):

- ``qkv``: the input projections of an attention module (a class whose name holds "Attention"): timm's
  fused ``attn.qkv`` (one adapter whose rank-r update spans q, k and v together), separate
  ``q``/``k``/``v``/``q_proj``/... layers, torchvision's fused ``in_proj`` (below);
- ``proj``: the attention's output projection (``proj``, ``out_proj``, ``o_proj``);
- ``mlp``: the linear layers of an MLP module (a class whose name holds "Mlp"/"MLP", "FeedForward"):
  timm's ``mlp.fc1``/``fc2``, torchvision's ``mlp.0``/``mlp.3``.

torchvision's ViT calls `nn.MultiheadAttention`, whose fused ``in_proj_weight`` is a bare parameter and
whose ``out_proj`` forward is never called (`F.multi_head_attention_forward` reads its weight), so an
adapter put on ``out_proj`` alone would be silently ignored. peft's own MultiheadAttention layer adapts both
at once by merging the adapters into the weights before each forward and subtracting them after it, which
leaves the "frozen" weights off by rounding after every step. Instead each such module is swapped for
`_SelfAttention`: the same parameters as two `nn.Linear` (``in_proj``, ``out_proj``) and the same math
through `scaled_dot_product_attention`, so each gets an ordinary adapter; `Adapters.merge` puts the
original module back with the merged weights.

Whatever the backbone, `attach` runs one forward with hooks and refuses adapters that the model never
calls (a model that reads ``self.qkv.weight`` directly, as BEiT's attention does, would ignore them).

The checkpoint (`finetune/checkpoint.py`) holds the adapted model's state (base weights and adapters apart);
the run's model.safetensors holds the merged weights under the backbone's own keys, what a full
fine-tuning run writes, so te export and te predict need nothing new.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transfer_engine.core.choices import LORA_TARGETS
from transfer_engine.errors import TEError, UsageError

PEFT_MIN_VERSION = (0, 10)
INSTALL_HINT = "pip install peft (or pip install 'transfer-engine[lora]')"
# Child names of an attention module, by role; anything else inside it (a relative position MLP, a norm)
# keeps its weights.
QKV_NAMES = frozenset({"qkv", "in_proj", "q", "k", "v", "kv", "q_proj", "k_proj", "v_proj", "qkv_proj",
                       "query", "key", "value"})
PROJ_NAMES = frozenset({"proj", "out_proj", "o_proj", "out"})
MLP_CLASS_MARKS = ("mlp", "feedforward", "swiglu")
# The merged model must compute what the adapted one computed: fp32 rounding of the merge is far below it.
MERGE_TOLERANCE = 1e-4
PROBE_IMAGES = 2
PROBE_SEED = 0


def require_peft() -> None:
    """Fail with the install command when peft is missing or too old (before any model work).

    Raises:
        UsageError: peft cannot be imported, or is older than `PEFT_MIN_VERSION`.
    """
    try:
        import peft
    except ImportError:
        raise UsageError(f"--strategy lora needs the peft library, which is not installed: {INSTALL_HINT}") from None
    version = tuple(int(p) for p in peft.__version__.split(".")[:2] if p.isdigit())
    if version < PEFT_MIN_VERSION:
        raise UsageError(f"--strategy lora needs peft >= {'.'.join(map(str, PEFT_MIN_VERSION))}, found "
                         f"{peft.__version__}: pip install -U peft")


class _SelfAttention(nn.Module):
    """`nn.MultiheadAttention`'s computation with its projections as `nn.Linear` modules peft can adapt.

    Shares the original module's parameters (nothing is copied); `restore` returns the original with the
    current (merged) weights. Supports what torchvision's ViT asks of it: no masks, no attention weights.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise UsageError("--strategy lora supports nn.MultiheadAttention with equal query/key/value sizes, "
                             "no bias_k/bias_v and no add_zero_attn")
        self.embed_dim, self.num_heads, self.dropout = mha.embed_dim, mha.num_heads, mha.dropout
        self.batch_first = mha.batch_first
        in_proj = nn.Linear(mha.embed_dim, 3 * mha.embed_dim, bias=mha.in_proj_bias is not None, device="meta")
        in_proj.weight = mha.in_proj_weight
        in_proj.bias = mha.in_proj_bias
        self.in_proj = in_proj
        self.out_proj = mha.out_proj
        self._original = (mha,)  # a tuple: not a registered child, so its parameters are not listed twice

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask=None,
                need_weights: bool = True, attn_mask=None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if need_weights or key_padding_mask is not None or attn_mask is not None or is_causal:
            raise TEError("--strategy lora: this model asks its attention for masks or attention weights, which "
                          "the adapted attention does not provide; use another --strategy")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        e = self.embed_dim
        if query is key and key is value:
            q, k, v = self.in_proj(query).split(e, dim=-1)
        else:  # cross-attention: each input through its third of the fused projection
            q, k, v = (self.in_proj(t)[..., i * e:(i + 1) * e] for i, t in enumerate((query, key, value)))
        n, length, _ = q.shape
        heads = [t.reshape(n, t.shape[1], self.num_heads, e // self.num_heads).transpose(1, 2) for t in (q, k, v)]
        out = F.scaled_dot_product_attention(*heads, dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, e))
        return (out if self.batch_first else out.transpose(0, 1)), None

    def restore(self) -> nn.MultiheadAttention:
        """The original module, holding this module's current projection weights."""
        mha = self._original[0]
        with torch.no_grad():
            if self.in_proj.weight is not mha.in_proj_weight:
                mha.in_proj_weight.copy_(self.in_proj.weight)
            if mha.in_proj_bias is not None and self.in_proj.bias is not mha.in_proj_bias:
                mha.in_proj_bias.copy_(self.in_proj.bias)
        mha.out_proj = self.out_proj
        return mha


def _split_attention(backbone: nn.Module) -> list[tuple[nn.Module, str, _SelfAttention]]:
    """Swap every nn.MultiheadAttention in `backbone` for a `_SelfAttention`; returns where they went."""
    swapped = []
    for parent in list(backbone.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                split = _SelfAttention(child)
                setattr(parent, name, split)
                swapped.append((parent, name, split))
    return swapped


def _role(parent: nn.Module, child_name: str) -> str | None:
    kind = type(parent).__name__.lower()
    if "attention" in kind:
        return "qkv" if child_name in QKV_NAMES else "proj" if child_name in PROJ_NAMES else None
    if any(mark in kind for mark in MLP_CLASS_MARKS):
        return "mlp"
    return None


def target_modules(backbone: nn.Module) -> dict[str, list[str]]:
    """The backbone's linear layers by role (see the module docstring).

    Args:
        backbone: the backbone, after `_split_attention`.

    Returns:
        {role: dotted module names}, every role of `LORA_TARGETS` present (possibly empty).
    """
    found: dict[str, list[str]] = {role: [] for role in LORA_TARGETS}
    for parent_name, parent in backbone.named_modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                role = _role(parent, child_name)
                if role is not None:
                    found[role].append(f"{parent_name}.{child_name}" if parent_name else child_name)
    return found


@dataclass
class Adapters:
    """LoRA adapters attached to a backbone (in place): what to record, and how to merge them away.

    Attributes:
        backbone: the adapted backbone (the same object the model holds).
        rank, alpha, targets: as asked (`--lora-rank`, `--lora-alpha`, `--lora-targets`).
        modules: {role: dotted names of the adapted layers}.
        parameters: trainable adapter parameters (elements).
        base_parameters: the backbone's own parameters (elements).
    """

    backbone: nn.Module
    rank: int
    alpha: float
    targets: tuple[str, ...]
    modules: dict[str, list[str]]
    parameters: int
    base_parameters: int
    probe_size: int
    _peft: Any = field(repr=False, default=None)
    _swapped: list = field(repr=False, default_factory=list)

    def settings(self) -> dict[str, Any]:
        """What run.json records (and a resume must match)."""
        return {"lora_rank": self.rank, "lora_alpha": self.alpha, "lora_targets": list(self.targets),
                "lora_modules": {role: len(names) for role, names in self.modules.items()},
                "lora_parameters": self.parameters}

    def merge(self) -> str:
        """Fold the adapters into the base weights and give the backbone back its own modules and keys.

        Afterwards the backbone is the plain backbone (torchvision's MultiheadAttention included) holding
        W + (alpha / rank) * B @ A. Its outputs on a few random images are checked against the adapted
        model's before the merge.

        Returns:
            A line for the progress output.

        Raises:
            TEError: the merged model computes something else than the adapted one.
        """
        backbone = self.backbone
        was_training = backbone.training
        backbone.eval()
        param = next(backbone.parameters())
        probe = torch.randn(PROBE_IMAGES, 3, self.probe_size, self.probe_size,
                            generator=torch.Generator().manual_seed(PROBE_SEED)).to(param.device)
        with torch.no_grad():
            adapted = backbone(probe).float()
            merged_model = self._peft.merge_and_unload()
            if merged_model is not backbone:
                raise TEError("peft's merge_and_unload returned a new model instead of merging in place; "
                              f"this peft version ({_peft_version()}) is not supported by --strategy lora")
            for parent, name, split in self._swapped:
                setattr(parent, name, split.restore())
            merged = backbone(probe).float()
        backbone.train(was_training)
        diff = float((merged - adapted).abs().max())
        scale = 1.0 + float(adapted.abs().max())
        if not diff <= MERGE_TOLERANCE * scale:
            raise TEError(f"merging the LoRA adapters changed the backbone's outputs by up to {diff:.3g}; "
                          "the run was not written")
        return (f"finetune: merged the LoRA adapters into the backbone's weights (outputs on {PROBE_IMAGES} random "
                f"images agree within {diff:.1e})")


def _peft_version() -> str:
    import peft

    return peft.__version__


def attach(backbone: nn.Module, *, rank: int = 8, alpha: float = 16.0,
           targets: Sequence[str] = LORA_TARGETS, input_size: int = 224, name: str = "the backbone") -> Adapters:
    """Put LoRA adapters on the backbone's attention and MLP linear layers, in place.

    Args:
        backbone: the backbone (images -> features); modified in place.
        rank: rank r of each adapter.
        alpha: scaling numerator (the update is alpha / r * B @ A).
        targets: roles to adapt, from `LORA_TARGETS`.
        input_size: the training input size (the probe forward that checks every adapter is used).
        name: the backbone's name, for error messages.

    Returns:
        The `Adapters`; base parameters are left frozen (requires_grad False), adapters trainable.

    Raises:
        UsageError: peft missing, no layer of the asked roles (not a transformer), or adapters the model
            never calls.
    """
    require_peft()
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    bad = [t for t in targets if t not in LORA_TARGETS]
    if bad or not targets:
        raise UsageError(f"--lora-targets must be one or more of {', '.join(LORA_TARGETS)}, got {','.join(targets)!r}")
    base_parameters = sum(p.numel() for p in backbone.parameters())
    swapped = _split_attention(backbone)
    found = target_modules(backbone)
    chosen = {role: found[role] for role in targets}
    names = [n for role in targets for n in found[role]]
    if not names:
        for parent, child, split in swapped:
            setattr(parent, child, split.restore())
        roles = "attention or MLP" if set(targets) == set(LORA_TARGETS) else "/".join(targets)
        raise UsageError(f"--strategy lora adapts the {roles} linear layers of transformer backbones and {name} has "
                         "none; use a ViT (vit_b_16, vit_b_32, timm/vit_*, timm/deit_*, timm/swin_*, ...) or another "
                         "--strategy")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=names, bias="none")
    model = get_peft_model(backbone, config)
    adapted = {n: m for n, m in backbone.named_modules() if isinstance(m, LoraLayer)}
    _check_called(backbone, adapted, chosen, input_size, name)
    parameters = sum(p.numel() for n, p in backbone.named_parameters() if p.requires_grad)
    return Adapters(backbone, rank, float(alpha), tuple(targets), chosen, parameters, base_parameters, input_size,
                    model, swapped)


def _check_called(backbone: nn.Module, adapted: dict[str, nn.Module], roles: dict[str, list[str]], input_size: int,
                  name: str) -> None:
    """One forward with hooks: an adapter whose layer the model never calls would train for nothing."""
    called: set[str] = set()
    hooks = [m.register_forward_hook(lambda mod, args, out, n=n: called.add(n)) for n, m in adapted.items()]
    was_training = backbone.training
    backbone.eval()
    try:
        param = next(backbone.parameters())
        with torch.no_grad():
            backbone(torch.zeros(1, 3, input_size, input_size, device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
        backbone.train(was_training)
    unused = [n for n in adapted if n not in called]
    if unused:
        skip = [r for r, names in roles.items() if any(n in names for n in unused)]
        keep = [r for r in roles if r not in skip] or [r for r in LORA_TARGETS if r not in skip]
        raise UsageError(f"--strategy lora: {name} never calls {len(unused)} of the layers to adapt (it reads their "
                         f"weights directly), e.g. {unused[0]}; leave {' and '.join(skip)} out of --lora-targets"
                         + (f" (e.g. --lora-targets {','.join(keep)})" if keep else ""))
