"""Contact sheets: the top near-duplicate pairs side by side, and the top suspected label errors with the
label given and the class the probe predicts. The only step of te doctor that reads images (thumbnails)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from transfer_engine.core.progress import Say

if TYPE_CHECKING:
    from transfer_engine.doctor.run import Diagnosis

THUMB = 128          # pixels, the longer side of a thumbnail
COLUMNS = 4          # cells per row of a sheet
CAPTION = 30         # pixels of text under a cell
NEAR_DUPLICATES_PNG = "near_duplicates.png"
LABEL_ERRORS_PNG = "label_errors.png"


def draw_sheets(d: "Diagnosis", out: Path, say: Say) -> dict[str, str]:
    """Draw the sheets that have something to show; returns {"near_duplicates": path, "label_errors": path}.
    Images that cannot be read any more are drawn as a grey box (named in the caption)."""
    rows = d.rows
    if rows.data is None:
        say("doctor: no contact sheets: the cache does not record where the images of this data set are")
        return {}
    files = {}
    cross = [(p, k) for p, k in zip(d.pairs, d.kinds) if not k.startswith("within")]
    shown = (cross or list(zip(d.pairs, d.kinds)))[:d.config.top]
    if shown:
        lined_up = d.rule.get("by") == "aligned"  # the score that judged them: aligned, else the features' cosine
        cells = [([rows.records_of[p.a][0], rows.records_of[p.b][0]],
                  f"{p.aligned if lined_up else p.cosine:.3f} {k}") for p, k in shown]
        files["near_duplicates"] = _sheet(d, cells, out / NEAR_DUPLICATES_PNG,
                                          f"near duplicates: {'aligned score' if lined_up else 'cosine'}, splits")
    flagged = d.labels.flagged[:d.config.top].tolist()
    if flagged:
        names = rows.class_names
        cells = [([int(d.labels.pool[i])],
                  f"given {names[rows.labels[d.labels.pool[i]]]} / predicted {names[d.labels.predicted[i]]}")
                 for i in flagged]
        files["label_errors"] = _sheet(d, cells, out / LABEL_ERRORS_PNG, "likely label errors: given / predicted")
    return files


def _thumb(d: "Diagnosis", record: int):
    from PIL import Image

    from transfer_engine.data.recorded import recorded_image

    try:
        image = recorded_image(d.rows.data, d.rows.paths[record])
    except (OSError, ValueError):
        return Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
    image = image.convert("RGB")
    scale = THUMB / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.NEAREST if max(image.size) < THUMB // 2 else Image.BILINEAR)


def _sheet(d: "Diagnosis", cells: list[tuple[list[int], str]], path: Path, title: str) -> str:
    from PIL import Image, ImageDraw

    per_cell = max(len(records) for records, _ in cells)
    cell_w, cell_h = per_cell * (THUMB + 4) + 8, THUMB + CAPTION + 8
    columns = min(COLUMNS, len(cells))
    rows_n = (len(cells) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * cell_w, 24 + rows_n * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), title, fill="black")
    for n, (records, caption) in enumerate(cells):
        x, y = (n % columns) * cell_w + 4, 24 + (n // columns) * cell_h
        for m, record in enumerate(records):
            thumb = _thumb(d, record)
            sheet.paste(thumb, (x + m * (THUMB + 4) + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
            draw.text((x + m * (THUMB + 4), y + THUMB + 2), str(d.rows.splits[record]), fill="dimgray")
        draw.text((x, y + THUMB + 14), caption[:48], fill="black")
    sheet.save(path)
    return str(path)
