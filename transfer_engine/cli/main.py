"""Entry point of the `te` command: wires the command groups and turns errors into one line.

Exit codes: 0 ok, 1 runtime failure, 2 usage error, 130 interrupted. A traceback is shown only with
TE_DEBUG=1. Nothing here imports torch, so `te --help` and `te CMD --help` answer at once.
"""

from __future__ import annotations

import os
import sys

import click

from transfer_engine._version import __version__
from transfer_engine.cli import (backbones, bench, cache, compare, demo, doctor, export, extract, finetune, heads, info,
                                 plugins, predict, train)
from transfer_engine.core import distributed
from transfer_engine.core.env import env_flag
from transfer_engine.errors import TEError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="te", message="%(prog)s %(version)s")
def cli() -> None:
    """te: transfer learning on cached features, with verified ONNX export.

    \b
    images --extract--> feature cache --train--> head --finetune--> model --export--> ONNX --predict-->

    \b
    Start here:
      te backbones                 the backbones installed (built-in and plugins)
      te heads                     the heads installed
      te plugins                   every plugin, its distribution, version and status
      te demo                      the whole path on the built-in real data (offline)
      te extract --backbone NAME --data SRC --cache DIR
                                   features of a data set, once, into the feature cache
      te compare --data SRC --cache DIR --backbones NAME,NAME,...
                                   which backbone for my data: LogME, probes, costs
      te doctor --cache DIR        what is wrong with the data: leaks across splits, duplicates,
                                   label errors, outliers (from the cached features)
      te train --cache DIR --head all --sweep --out RUNS
                                   heads fitted on the cached features, a leaderboard
      te finetune --from RUN --out FT
                                   end-to-end fine-tuning warm-started from a trained head
      te export RUN --onnx --quantize int8 --out model.onnx
                                   ONNX, checked against PyTorch on real images
      te predict model.onnx --data DIR
                                   classify images through onnxruntime
      te bench --suite quick       te against the plain-PyTorch way, ratios and targets
      te cache info DIR            what a feature cache holds (verify, gc: check it, clean it)

    Set TE_DEBUG=1 to see the traceback of an error.
    """


# One command per line (each lives in its own module of transfer_engine.cli).
COMMANDS = (
    backbones.backbones,
    heads.heads,
    plugins.plugins,
    extract.extract,
    compare.compare,
    doctor.doctor,
    train.train,
    finetune.finetune,
    export.export,
    predict.predict,
    cache.cache,
    bench.bench,
    info.info,
    demo.demo,
)
for command in COMMANDS:
    cli.add_command(command)


def _debug() -> bool:
    return env_flag("TE_DEBUG")


def main(argv: list[str] | None = None) -> int:
    """Run `te` with `argv` (default: sys.argv[1:]) and return the exit code.

    Under torchrun, every way out leaves the job's process group first (`distributed.leave`): a failure's
    first line is posted for the other ranks, which then end at once naming this one, and no backend
    thread is left to interpreter shutdown.
    """
    failure: BaseException | None = None
    try:
        result = cli.main(args=argv, prog_name="te", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Abort as exc:
        failure = exc
        click.echo("te: aborted", err=True)
        return 130
    except click.ClickException as exc:  # usage errors: click already formats them
        failure = exc
        exc.show()
        return exc.exit_code
    except TEError as exc:
        failure = exc
        if _debug():
            raise
        click.echo(f"te: error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        failure = exc
        click.echo("te: interrupted", err=True)
        return 130
    except Exception as exc:  # a bug of ours: one line, and how to see more
        failure = exc
        if _debug():
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        click.echo(
            f"te: internal error: {type(exc).__name__}: {first} (run with TE_DEBUG=1 for the traceback)", err=True
        )
        return 1
    finally:
        distributed.leave(failure)


def entry() -> None:  # pragma: no cover - the console script
    code = main()
    if distributed.joined_a_job():
        # A worker of a torchrun job has done its work and left the process group; interpreter shutdown
        # would still run native libraries' destructors (gloo's, NCCL's, onnxruntime's thread pools), and
        # one that aborts there turns a finished worker into a failed one, whose launcher then skips
        # torchrun's exit barrier while the other nodes' launchers wait in it (docs/scale.md, "When a node
        # fails"). So a worker ends as soon as its output is flushed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
