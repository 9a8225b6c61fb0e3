"""`te finetune --strategy lora`: only the adapters and the head train (the backbone's own weights stay bit
for bit), the run holds merged weights under a full fine-tuning run's keys that compute what the adapted
model computed, te export's ONNX parity check passes on it, a resume ends with the uninterrupted weights,
torchvision's fused MultiheadAttention is adapted and merged back, and mistakes are one-line errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import ONE_THREAD
from safetensors.torch import load_file
from torch import nn

from transfer_engine.backbones import create_backbone
from transfer_engine.core.configs import FinetuneConfig
from transfer_engine.core.runtime import torch_threads
from transfer_engine.errors import UsageError
from transfer_engine.finetune import finetune
from transfer_engine.finetune.checkpoint import LAST, checkpoint_dir
from transfer_engine.finetune.strategies import apply_phase, backbone_blocks, is_adapter, make_strategy
from transfer_engine.heads import create_head
from transfer_engine.runs import Classifier, Run

pytest.importorskip("peft")
from transfer_engine.finetune import lora  # noqa: E402

BACKBONE = "timm/test_vit"  # timm's test ViT: 6 blocks of width 64 with a fused attn.qkv, 160 px, random init
KWARGS = dict(backbone=BACKBONE, weights="none", data="builtin:digits", head="linear", strategy="lora", epochs=2,
              lr=1e-3, keep="last", limit=120, batch_size=16, augment="none", progress=False)


def _probe() -> torch.Tensor:
    return torch.randn(3, 3, 160, 160, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A two-epoch lora run; the adapted model's state and fp32 logits on a probe after its last epoch."""
    with torch_threads(1):
        tmp = tmp_path_factory.mktemp("lora")
        base = {f"backbone.{k}": v.clone() for k, v in
                create_backbone(BACKBONE, weights="none", seed=0).model.state_dict().items()}
        torch.manual_seed(0)  # the new head is initialized from the seed, after the backbone
        base.update({f"head.{k}": v for k, v in create_head("linear", 64, 10).state_dict().items()})
        seen = {}

        def snapshot(epoch, model):
            seen["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            mode = model.training
            model.eval()
            with torch.no_grad():
                seen["logits"] = model(_probe()).float()
            model.train(mode)

        summary = finetune(tmp / "run", on_epoch_end=snapshot, **KWARGS)
        return SimpleNamespace(path=tmp / "run", base=base, summary=summary, **seen)


def test_only_the_adapters_and_the_head_train_and_the_backbone_weights_stay_bit_for_bit(lora_run):
    state = lora_run.state
    adapters = {k: v for k, v in state.items() if is_adapter(k)}
    own = {k.replace(".base_layer", ""): v for k, v in state.items() if not is_adapter(k)}
    assert own.keys() == lora_run.base.keys()
    backbone = [k for k in own if k.startswith("backbone.")]
    assert len(backbone) > 50 and all(torch.equal(own[k], lora_run.base[k]) for k in backbone)
    assert not torch.equal(own["head.weight"], lora_run.base["head.weight"])
    # 6 blocks x (qkv, proj, fc1, fc2) adapters; B starts at zero, so a non-zero B has trained
    lora_b = [k for k in adapters if ".lora_B." in k]
    assert len(lora_b) == 24 and all(adapters[k].abs().sum() > 0 for k in lora_b)


def test_the_run_holds_merged_weights_under_the_keys_of_a_full_fine_tuning_run_and_records_the_adapters(lora_run):
    plain = Classifier(create_backbone(BACKBONE, weights="none").model, create_head("linear", 64, 10))
    written = load_file(lora_run.path / "model.safetensors")
    assert written.keys() == plain.state_dict().keys()
    hp = json.loads((lora_run.path / "run.json").read_text())["hyperparameters"]
    assert hp["strategy"] == "lora" and hp["lora_rank"] == 8 and hp["lora_alpha"] == 16.0
    assert hp["lora_targets"] == ["qkv", "proj", "mlp"] and hp["lora_modules"] == {"qkv": 6, "proj": 6, "mlp": 12}
    assert hp["lora_parameters"] == 6 * 8 * ((64 + 192) + (64 + 64) + 2 * (64 + 192))
    assert lora_run.summary.strategy == "lora"


def test_the_merged_model_computes_what_the_adapted_model_computed(lora_run):
    model = Run.open(lora_run.path).build_model().eval()  # what te export and te predict build
    with torch.no_grad():
        merged = model(_probe())
    assert not torch.equal(lora_run.logits, merged)  # merged, not the adapted model's own tensors
    torch.testing.assert_close(merged, lora_run.logits, rtol=0, atol=1e-5)


def test_te_export_onnx_of_a_lora_run_passes_its_parity_check(te, lora_run, tmp_path):
    r = te("export", str(lora_run.path), "--onnx", "--out", str(tmp_path / "m.onnx"), "--check-size", "8",
           "--json", env=ONE_THREAD)
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["passed"] and report["variants"]["fp32"]["top1_agreement"] == 1.0


def test_an_interrupted_lora_run_resumes_from_its_adapters_to_the_uninterrupted_weights(lora_run, tmp_path,
                                                                                       one_thread):
    class Interrupted(Exception):
        pass

    def stop(epoch, model):
        if epoch == 2:  # the checkpoint after epoch 1 is on disk
            raise Interrupted

    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        finetune(out, on_epoch_end=stop, **KWARGS)
    saved = torch.load(checkpoint_dir(out) / LAST, weights_only=True)["model"]
    assert any(".lora_A." in k for k in saved) and any(".base_layer." in k for k in saved)  # unmerged
    with pytest.raises(UsageError, match="other settings.*lora_rank"):
        finetune(out, resume=True, **{**KWARGS, "lora_rank": 4})
    assert finetune(out, resume=True, **KWARGS).resumed
    got, want = load_file(out / "model.safetensors"), load_file(lora_run.path / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def _tiny_torchvision_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    model.heads = nn.Identity()
    return model.eval()


def test_torchvision_multihead_attention_is_adapted_through_its_fused_in_proj_and_merged_back():
    model = _tiny_torchvision_vit()
    keys = model.state_dict().keys()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        original = model(x)
    adapters = lora.attach(model, rank=4, alpha=8, input_size=32, name="tiny vit")
    assert {role: len(names) for role, names in adapters.modules.items()} == {"qkv": 2, "proj": 2, "mlp": 4}
    assert adapters.modules["qkv"][0].endswith("self_attention.in_proj")
    with torch.no_grad():
        torch.testing.assert_close(model(x), original, rtol=0, atol=1e-5)  # B = 0: the backbone, same math
        in_proj = model.encoder.layers[0].self_attention.in_proj
        in_proj.lora_B["default"].weight.normal_(std=0.5)  # only the fused in_proj of the first layer moves
        adapted = model(x)
    assert (adapted - original).abs().max() > 1e-2  # the adapter is on the forward path
    adapters.merge()
    attention = model.encoder.layers[0].self_attention
    assert type(attention) is nn.MultiheadAttention and model.state_dict().keys() == keys
    with torch.no_grad():
        torch.testing.assert_close(model(x), adapted, rtol=0, atol=1e-5)


def test_adapters_and_the_head_are_a_small_fraction_of_a_vit_and_all_that_trains():
    model = create_backbone("timm/vit_tiny_patch16_224", weights="none").model
    total = sum(p.numel() for p in model.parameters())
    adapters = lora.attach(model, input_size=224)
    per_block = 8 * ((192 + 576) + (192 + 192) + 2 * (192 + 768))  # rank 8 on qkv, proj, fc1, fc2
    assert adapters.parameters == 12 * per_block and adapters.parameters < 0.06 * total
    blocks = backbone_blocks(model)
    plan = make_strategy("lora", len(blocks), adapters=[b.has_adapters for b in blocks])
    model.train()
    assert apply_phase(model, blocks, plan, 0) == adapters.parameters
    assert all(p.requires_grad == is_adapter(n) for n, p in model.named_parameters())


def test_a_backbone_without_attention_is_a_one_line_usage_error_naming_what_works(tmp_path):
    with pytest.raises(UsageError) as err:
        finetune(tmp_path / "out", **{**KWARGS, "backbone": "mobilenet_v3_small", "input_size": 32})
    assert "transformer" in str(err.value) and "vit_b_16" in str(err.value) and "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())  # nothing written, nothing staged


def test_adapters_the_model_would_never_call_are_refused():
    class Attention(nn.Module):  # reads its qkv weight directly, as BEiT's attention does
        def __init__(self):
            super().__init__()
            self.qkv, self.proj = nn.Linear(8, 24), nn.Linear(8, 8)

        def forward(self, x):
            q, k, v = F.linear(x, self.qkv.weight, self.qkv.bias).chunk(3, -1)
            return self.proj(F.scaled_dot_product_attention(q, k, v))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.attn = nn.Conv2d(3, 8, 4, 4), Attention()

        def forward(self, x):
            return self.attn(self.embed(x).flatten(2).transpose(1, 2)).mean(1)

    with pytest.raises(UsageError, match=r"never calls 1 of the layers.*attn.qkv; leave qkv out of --lora-targets "
                                         r"\(e.g. --lora-targets proj,mlp\)"):
        lora.attach(Net(), input_size=16, name="net")
    lora.attach(Net(), targets=("proj",), input_size=16)  # the layers it does call are fine


def test_lora_options_without_strategy_lora_are_usage_errors():
    for option in ({"lora_rank": 4}, {"lora_alpha": 8}, {"lora_targets": ("qkv",)}):
        with pytest.raises(UsageError, match="apply to --strategy lora"):
            FinetuneConfig(backbone="vit_b_16", data="builtin:digits", head="linear", **option)
    with pytest.raises(UsageError, match="--lora-targets must be one or more of qkv,proj,mlp"):
        FinetuneConfig(backbone="vit_b_16", data="builtin:digits", head="linear", strategy="lora",
                       lora_targets=("attn",))


def test_without_peft_strategy_lora_is_one_line_saying_how_to_install_it(te, tmp_path):
    shadow = tmp_path / "site" / "peft"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'peft'\")\n")
    r = te("finetune", "--backbone", BACKBONE, "--weights", "none", "--data", "builtin:digits", "--head", "linear",
           "--strategy", "lora", "--out", str(tmp_path / "out"), env={"PYTHONPATH": str(shadow.parent)})
    assert r.code == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "pip install peft" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
