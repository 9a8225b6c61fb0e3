"""`te doctor`: what is wrong with a data set (leaks across splits, duplicates, label errors, outliers), from
the features te has cached."""

from __future__ import annotations

import click

from transfer_engine.cli._common import emit_json, json_option
from transfer_engine.cli._options import options_from
from transfer_engine.core.configs import DoctorConfig


@click.command("doctor")
@options_from(DoctorConfig)
@json_option
def doctor(as_json, **fields) -> None:
    """Find what is wrong with a data set before trusting its accuracy, from the cached features alone.

    Exact duplicates (the same bytes) across splits and under conflicting labels; near duplicates across
    splits (the same picture resized, re-encoded, cropped a little or colour-shifted: cosine of the
    features above --threshold; when the cache holds the copy thumbnails of te extract --backbone
    copy_thumbnail, the two pictures lined up above --aligned-threshold; else, with the copy signature of
    te extract --backbone dct_signature, its cosine above --signature-threshold); likely label errors (a head's out-of-fold
    probabilities over train+val, judged by cleanlab's confident learning); outliers and class balance; and the test accuracy of a head
    with and without the leaked test images. Writes doctor.md, doctor.json and contact sheets to --out;
    --write-manifest writes a CSV manifest without the leaked images (your files are never touched), which
    te extract reads with every row reused from the cache.

    \b
    Examples:
      te doctor --cache feats/
      te extract --backbone copy_thumbnail --data photos/ --cache feats/  # then te doctor: copies, not look-alikes
      te doctor --cache feats/ --dataset photos --run runs/linear --out doctor/
      te doctor --cache feats/ --write-manifest clean.csv --drop-label-errors
      te extract --backbone efficientnet_lite0 --data clean.csv --cache feats/    # 0 extracted, all reused
    """
    from transfer_engine.doctor import doctor as run_doctor
    from transfer_engine.doctor import summary_lines

    diagnosis = run_doctor(DoctorConfig(**fields), progress=True)
    if as_json:
        emit_json(diagnosis.to_dict())
        return
    for line in summary_lines(diagnosis):
        click.echo(line)
    click.echo("files: " + ", ".join(diagnosis.files[k] for k in ("md", "json", "near_duplicates", "label_errors",
                                                                      "manifest") if k in diagnosis.files))
