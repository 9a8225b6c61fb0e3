"""`te bench`'s config: which benchmarks, at which sizes, written where."""

from __future__ import annotations

from dataclasses import dataclass

from transfer_engine.core.choices import BENCH_SUITES
from transfer_engine.core.configs.base import Config
from transfer_engine.core.options import option


@dataclass(frozen=True)
class BenchConfig(Config):
    """What `te bench` is asked to do; `te bench --help` says what each field means."""

    suite: str = option("quick", choices=BENCH_SUITES,
                        help="quick: small sizes, minutes on a 2-core CPU; full: the sizes the targets name "
                             "(ResNet-50).")
    only: tuple[str, ...] = option((), metavar="NAME,...",
                                   help="Run only these benchmarks (names of benchmarks/bench_NAME.py, "
                                        "comma-separated).")
    out: str = option("te-bench", metavar="DIR", help="Where results.json, results.md and ratios.png go.")
    benchmarks: str | None = option(None, metavar="DIR",
                                    help="The benchmark scripts (default: benchmarks/ of te's source checkout).")
    timeout: float | None = option(None, low=1, metavar="S",
                                   help="Seconds one benchmark script may run before it is stopped and reported as "
                                        "failed [default: 1800 for quick, 14400 for full].")
    publish: bool = option(False, help="After a complete run: copy results.md to benchmarks/RESULTS.md (and the chart "
                                       "to benchmarks/ratios.png) and regenerate README.md's benchmark rows from it.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "only", tuple(self.only))
        object.__setattr__(self, "out", str(self.out))
        self.check()
