"""`te plugins check NAME`: the conformance suite a plugin author runs before publishing.

For every entry point of the named distribution (or the named entry point) in te's two groups:

    load         the entry point imports and gives specs that follow the contract
    names        no name it provides is also provided by another installed plugin
    per backbone (random weights, seeded; a sample of a large zoo unless asked for all):
      preprocess   the preprocessing is a complete PreprocessSpec for every weights choice
      build        build(None) gives an nn.Module
      forward      a batch at the declared input size gives pooled features [N, feature_dim]
      onnx         it exports to ONNX, passes the checker, and onnxruntime gives the same features
    per head (built with its declared options):
      build, fit (when it declares one), forward (features [N, D] -> logits [N, C]),
      safetensors  saved and loaded as te saves heads, it gives identical outputs
      onnx

    >>> from transfer_engine.plugins_check import check_plugin
    >>> report = check_plugin("te-efficientnet-lite")      # doctest: +SKIP
    >>> report.passed, report.counts()                      # doctest: +SKIP
    (True, {'pass': 6, 'fail': 0, 'skip': 0})
"""

from __future__ import annotations

from transfer_engine.plugins_check.results import FAIL, PASS, SKIP, CheckReport, CheckResult, Recorder
from transfer_engine.plugins_check.target import Target, check_load, check_names, find_targets

DEFAULT_LIMIT = 3
DEFAULT_MAX_PARAMS = 50_000_000


def check_plugin(name: str, *, limit: int = DEFAULT_LIMIT, pattern: str | None = None, check_all: bool = False,
                 max_params: int = DEFAULT_MAX_PARAMS, onnx: bool = True, remember: bool = False) -> CheckReport:
    """Check an installed plugin against te's contract.

    Args:
        name: an installed distribution (`te-timm`) or entry-point name (`timm`).
        limit: how many backbones of a plugin declaring more than this are checked (a spread sample).
        pattern: check only the backbones and heads whose name matches this shell pattern.
        check_all: check every backbone, however many.
        max_params: the default sample passes over models with more parameters (0: no limit).
        onnx: include the ONNX export checks.
        remember: record the verdict for `te plugins` (`te plugins check` does; see
            `transfer_engine.plugins_check.verdicts`).

    Returns:
        The report; `report.passed` is False when any check failed.

    Raises:
        UsageError: no installed distribution or entry point has that name.
    """
    import fnmatch

    from transfer_engine.plugins_check.backbones import check_backbone, choose
    from transfer_engine.plugins_check.heads import check_head

    report = CheckReport(target=name)
    for target in find_targets(name):
        report.entry_points.append(target.to_dict())
        rec = Recorder(report, target.label)
        first = len(report.results)
        specs = check_load(target, rec)
        if specs:
            check_names(target, specs, rec)
        if target.kind == "backbone":
            chosen, passed_over = choose(specs, limit=limit, pattern=pattern, check_all=check_all,
                                         max_params=max_params)
            report.sampled[target.label] = {"declared": len(specs), "checked": [s.name for s in chosen],
                                            "passed_over": passed_over}
            for spec in chosen:
                check_backbone(spec, rec, onnx=onnx)
        else:
            for spec in specs:
                if pattern is None or fnmatch.fnmatch(spec.name, pattern):
                    check_head(spec, rec, onnx=onnx)
        if remember:
            _remember(target, report.results[first:], report.sampled.get(target.label))
    return report


def _remember(target: Target, results: list[CheckResult], sampled: dict | None) -> None:
    from transfer_engine.plugins_check import verdicts

    failed = [r for r in results if r.status == FAIL]
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more failed check(s))" if len(failed) > 1 else ""
        summary = f"{first.check}{(' of ' + first.name) if first.name else ''}: {first.detail}{more}"
    else:
        passed = sum(r.status == PASS for r in results)
        of = f" ({len(sampled['checked'])} of {sampled['declared']} backbones)" if sampled else ""
        summary = f"{passed} checks passed{of}"
    verdicts.record({verdicts.key(target.distribution, target.version, target.group, target.name):
                     {"passed": not failed, "summary": summary}})


__all__ = ["CheckReport", "CheckResult", "DEFAULT_LIMIT", "DEFAULT_MAX_PARAMS", "FAIL", "PASS", "SKIP",
           "check_plugin"]
