"""`te finetune`: train backbone and head end to end, warm-started from a `te train` run."""

from __future__ import annotations

import os
from pathlib import Path

import click

from transfer_engine.cli._common import emit_json, json_option
from transfer_engine.core.choices import AUGMENTS, DEVICES, FINETUNE_PRECISIONS, KEEP, LORA_TARGETS, OPTIMIZERS, RECIPES, STRATEGIES
from transfer_engine.core.configs import FIXED_EPOCHS, FIXED_LR, FIXED_SETTINGS, SCHEDULE_EPOCHS, SCHEDULE_LR, SCHEDULE_SETTINGS
from transfer_engine.core.configs import FinetuneConfig

D = FinetuneConfig.default  # every default comes from the config (torch-free), so the CLI and Python agree


def _milestones(ctx, param, value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated epochs such as 1,2, got {value!r}") from None


class _LoraTargets(click.ParamType):
    """Comma-separated roles from LORA_TARGETS, e.g. qkv,mlp (the default arrives as the config's tuple)."""

    name = "targets"

    def convert(self, value, param, ctx) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        targets = tuple(v.strip() for v in str(value).split(",") if v.strip())
        if not targets or any(t not in LORA_TARGETS for t in targets):
            self.fail(f"expected one or more of {','.join(LORA_TARGETS)}, got {value!r}", param, ctx)
        return targets


@click.command("finetune")
@click.option("--from", "from_run", type=click.Path(path_type=Path), default=D("from_run_dir"), metavar="RUN",
              help="A `te train` run: its backbone, weights, preprocessing, head, data set and splits (LP-FT).")
@click.option("--backbone", default=D("backbone"), metavar="NAME", help="Instead of --from: a backbone (`te backbones`), with --data, --head.")
@click.option("--data", default=D("data"), metavar="SRC", help="With --backbone: image folder, .csv/.jsonl manifest or builtin:digits.")
@click.option("--head", default=D("head"), metavar="HEAD", help="With --backbone: a new head (`te heads`), e.g. linear.")
@click.option("--weights", default=D("weights"), show_default=True, metavar="W",
              help="With --backbone: weights name, 'none' (random init, seeded) or a local state-dict path.")
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="RUN",
              help="Run directory to write (what `te export` reads); checkpoints go to RUN.ckpt/ meanwhile.")
@click.option("--recipe", type=click.Choice(RECIPES), default=D("recipe"), show_default=True,
              help=f"schedule: one run of up to {SCHEDULE_EPOCHS} epochs (--epochs) at peak lr {SCHEDULE_LR:g}, as "
                   "many as --budget fits, keeping the last epoch unless the start is better on val; search: a run "
                   "per peak learning rate (3e-4, 1e-4, 3e-5 in turn) within --budget, keeping what did best on val "
                   "(the start included); fixed: --epochs at --lr once; auto: the schedule unless --epochs or --lr "
                   "is given.")
@click.option("--budget", "budget_minutes", type=click.FloatRange(min=0, min_open=True), default=D("budget_minutes"),
              show_default=True, metavar="MINUTES", help="Wall-clock bound of the schedule or the search (its cost is timed before training).")
@click.option("--epochs", type=click.IntRange(min=1), default=D("epochs"), metavar="N",
              help=f"Epochs to train [fixed recipe: {FIXED_EPOCHS}; schedule and search: the most a run takes].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=D("lr"), metavar="X",
              help=f"Peak learning rate of the head [fixed recipe: {FIXED_LR:g}; schedule: {SCHEDULE_LR:g}; search: "
                   "searched]; backbone blocks "
                   "get X * layer-decay ** depth-from-top.")
@click.option("--patience", type=click.IntRange(min=0), default=D("patience"), show_default=True, metavar="N",
              help="Stop when val (accuracy, then loss) has not improved on the best trained epoch for N epochs "
                   "(0: never; a search's trials use 2).")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=D("strategy"),
              help="What trains when [default: no_freeze with --from (LP-FT), freeze_unfreeze with --head].")
@click.option("--unfreeze-epoch", type=click.IntRange(min=0), default=D("unfreeze_epoch"), show_default=True, metavar="K",
              help="freeze_unfreeze: epochs of head-only training before the whole backbone trains.")
@click.option("--milestones", callback=_milestones, default=None, metavar="E1,E2,...",
              help="unfreeze_milestones: after E1 epochs the top group of backbone blocks trains, after E2 the "
                   "next, ... (as many groups as milestones).")
@click.option("--lora-rank", type=click.IntRange(min=1), default=D("lora_rank"), show_default=True, metavar="R",
              help="lora: rank of each adapter.")
@click.option("--lora-alpha", type=click.FloatRange(min=0, min_open=True), default=D("lora_alpha"), show_default=True,
              metavar="A", help="lora: adapter scale numerator (each update is scaled by A / R).")
@click.option("--lora-targets", type=_LoraTargets(), default=D("lora_targets"), show_default=",".join(D("lora_targets")),
              metavar="T1,T2", help="lora: which linear layers get adapters: qkv (attention input projections), proj "
                                   "(attention output), mlp.")
@click.option("--layer-decay", type=click.FloatRange(min=0, max=1, min_open=True), default=D("layer_decay"), show_default=True,
              metavar="D", help="Learning-rate factor per backbone block, from the top (1 = same rate everywhere).")
@click.option("--freeze-bn/--train-bn", default=D("freeze_bn"), show_default=True,
              help="Keep BatchNorm running statistics frozen in trainable blocks too, or let them follow the "
                   "new data (frozen blocks never update them).")
@click.option("--backbone-dropout/--no-backbone-dropout", default=D("backbone_dropout"), show_default=True,
              help="Dropout and stochastic depth inside the backbone while training (off: with frozen BatchNorm "
                   "statistics the backbone computes what te extract computed, so the --from head fits it).")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=D("optimizer"), show_default=True,
              help="AdamW (decoupled weight decay) or SGD (Nesterov momentum 0.9).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=D("weight_decay"), metavar="X",
              help="Weight decay of weights (not of biases and norm layers) "
                   f"[schedule: {SCHEDULE_SETTINGS['weight_decay']:g}; otherwise {FIXED_SETTINGS['weight_decay']:g}].")
@click.option("--warmup", type=click.FloatRange(min=0, max=1), default=D("warmup"), show_default=True, metavar="F",
              help="Fraction of the steps with a linear warmup; cosine decay after it.")
@click.option("--clip-grad", type=click.FloatRange(min=0), default=D("clip_grad"), show_default=True, metavar="X",
              help="Clip the global gradient norm to X (0: no clipping).")
@click.option("--label-smoothing", type=click.FloatRange(min=0, max=1, max_open=True), default=D("label_smoothing"),
              metavar="X", help="Cross-entropy label smoothing "
              f"[schedule: {SCHEDULE_SETTINGS['label_smoothing']:g}; otherwise {FIXED_SETTINGS['label_smoothing']:g}].")
@click.option("--batch-size", type=click.IntRange(min=1), default=D("batch_size"), show_default=True, metavar="N",
              help="Images per optimizer step, over all processes.")
@click.option("--input-size", type=click.IntRange(min=16), default=D("input_size"), metavar="N",
              help="Train at NxN pixels instead of the weights' size (recorded: export and predict use it).")
@click.option("--augment", type=click.Choice(AUGMENTS), default=D("augment"), show_default=True,
              help="Training augmentation: random resized crop (and horizontal flip); none for tiny images "
                   "such as the 8x8 digits.")
@click.option("--crop-scale", type=click.FloatRange(min=0, max=1, min_open=True), default=D("crop_scale"),
              metavar="F", help="Smallest area fraction of the random resized crop "
              f"[schedule: {SCHEDULE_SETTINGS['crop_scale']:g}; otherwise {FIXED_SETTINGS['crop_scale']:g}].")
@click.option("--precision", type=click.Choice(FINETUNE_PRECISIONS), default=D("precision"), show_default=True,
              help="Autocast precision; auto = bf16 where the GPU or CPU has it natively (fp16 + loss scaling on older GPUs), fp32 otherwise.")
@click.option("--device", type=click.Choice(DEVICES), default=D("device"), show_default=True,
              help="Where to train.")
@click.option("--channels-last/--no-channels-last", default=D("channels_last"), show_default=True,
              help="NHWC memory layout for convolutions (faster on CPUs and tensor cores).")
@click.option("--seed", type=int, default=D("seed"), show_default=True,
              help="Seed of the data order, augmentations, dropout and a new head.")
@click.option("--workers", type=click.IntRange(min=0), default=D("workers"), metavar="N",
              help="Image decoding processes per process (default: 0 on machines with few cores).")
@click.option("--limit", type=click.IntRange(min=1), default=D("limit"), metavar="N", help="Only the first N images.")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=D("checkpoint_every"), show_default=True, metavar="N",
              help="Also checkpoint every N steps within an epoch (0: at the end of each epoch only).")
@click.option("--keep", type=click.Choice(KEEP), default=D("keep"),
              help="Weights to write: final = the last epoch's unless the start is better on val [the schedule's]; "
                   "best = the best epoch on val, the start included [otherwise]; last = the last epoch's.")
@click.option("--no-val", is_flag=True, default=D("no_val"),
              help="When the data has no val split, train on all of train and keep the last epoch (by default "
                   "te holds out the val te train held out, 15% of each class, and selects on it).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from RUN.ckpt/ (same settings).")
@click.option("--overwrite", is_flag=True, help="Replace a run at --out; start over instead of resuming.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes to train with (launches torchrun: DDP, gloo on CPU, NCCL on GPUs).")
@json_option
def finetune(from_run, backbone, data, head, weights, out, recipe, budget_minutes, epochs, lr, patience, strategy, unfreeze_epoch, milestones,
             lora_rank, lora_alpha, lora_targets, layer_decay, freeze_bn, backbone_dropout, optimizer, weight_decay, warmup, clip_grad, label_smoothing, batch_size,
             input_size, augment, crop_scale, precision, device, channels_last, seed, workers, limit,
             checkpoint_every, keep, no_val, resume, overwrite, nproc, as_json) -> None:
    """Fine-tune backbone and head end to end, from a trained head (LP-FT) or a new one.

    Writes a run directory (run.json, metrics.json, model.safetensors, learning_curve.png,
    confusion_matrix.png) that `te export` reads. Checkpoints are written every epoch to RUN.ckpt/;
    after a crash or kill the same command with --resume continues and ends with the same weights.

    \b
    Examples:
      te finetune --from runs/linear --out runs/ft --epochs 2 --input-size 64
      te finetune --backbone resnet18 --data photos/ --head linear --out runs/ft --strategy freeze_unfreeze
      te finetune --from runs/linear --out runs/ft --strategy unfreeze_milestones --milestones 1,2 --train-bn
      te finetune --from runs/vit-linear --out runs/lora --strategy lora --lora-rank 8 --lr 1e-3
      te finetune --from runs/linear --out runs/ft --resume          # after an interruption
      te finetune --from runs/linear --out runs/ft --nproc 2         # DDP through torchrun
    """
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from transfer_engine.core.runtime import relaunch_under_torchrun

        raise SystemExit(relaunch_under_torchrun(nproc))
    from transfer_engine.finetune import finetune as run_finetune

    config = FinetuneConfig(
        from_run_dir=from_run, backbone=backbone, data=data, head=head, weights=weights, recipe=recipe,
        budget_minutes=budget_minutes, epochs=epochs, lr=lr, patience=patience,
        strategy=strategy, unfreeze_epoch=unfreeze_epoch, milestones=milestones, layer_decay=layer_decay,
        lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=lora_targets,
        freeze_bn=freeze_bn, backbone_dropout=backbone_dropout, optimizer=optimizer, weight_decay=weight_decay, warmup=warmup, clip_grad=clip_grad,
        label_smoothing=label_smoothing, batch_size=batch_size, input_size=input_size, augment=augment,
        crop_scale=crop_scale, precision=precision, device=device, channels_last=channels_last, seed=seed, workers=workers, limit=limit,
        checkpoint_every=checkpoint_every, keep=keep, no_val=no_val)
    from transfer_engine.core import distributed

    with distributed.guarded("fine-tuning"):  # DDP's all-reduces: a lost rank is one line, not an internal error
        summary = run_finetune(out, config, resume=resume, overwrite=overwrite, progress=True)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if as_json:
        emit_json(summary.to_dict())
        return
    click.echo(f"{summary.out}: {summary.backbone} + {summary.head}, {summary.strategy}, {summary.epochs} epoch(s) "
               f"at {summary.input_size}px in {summary.seconds:.1f} s ({summary.images_per_second:.1f} img/s, "
               f"{summary.precision}, {summary.device}" + (f", {summary.world_size} processes" if summary.world_size > 1
                                                           else "") + ")")
    if summary.search is not None:
        for trial in summary.search["trials"]:
            click.echo(_trial_line(trial, summary.search["chosen"]))
        click.echo(summary.search["verdict"])
    kept = (f"kept the weights of epoch {summary.best_epoch}" if summary.best_epoch else
            "kept the starting weights: no epoch beat them on val, fine-tuning did not pay")
    click.echo(f"test accuracy: {_pct(summary.before.get('test_accuracy'))} before -> {_pct(summary.test_accuracy)} "
               f"after (val {_pct(summary.before.get('val_accuracy'))} -> {_pct(summary.val_accuracy)}; {kept})")
    if summary.parent is not None:
        click.echo(f"the --from run {summary.parent['path']} reported test accuracy "
                   f"{_pct(summary.parent.get('test_accuracy'))} on its cached features")


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _trial_line(t: dict, chosen: str) -> str:
    """One row of the search's trials: what it reached on val (and test), what it kept, its time."""
    if t["best_epoch"] is None:
        return f"  trial {t['name']:<14} {t['status']}"
    kept = f"epoch {t['best_epoch']}" if t["best_epoch"] else "the start"
    return (f"  trial {t['name']:<14} val {_pct(t['val_accuracy'])}  test {_pct(t['test_accuracy'])}  kept {kept}  "
            f"{t['epochs_run']}/{t['epochs']} epochs  {t['seconds']:.0f} s  {t['status']}"
            + ("  <- chosen" if t["name"] == chosen else ""))
