"""doctor.json and doctor.md: every finding, for programs and for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transfer_engine._durable import write_text_durably
from transfer_engine.core.format import TABLE_MISSING, percent, percent_interval, points

if TYPE_CHECKING:
    from transfer_engine.doctor.run import Diagnosis

DOCTOR_JSON = "doctor.json"
DOCTOR_MD = "doctor.md"


def _record(d: "Diagnosis", r: int) -> dict[str, Any]:
    rows = d.rows
    return {"path": rows.paths[r], "split": str(rows.splits[r]), "label": rows.class_names[rows.labels[r]]}


def _image(d: "Diagnosis", u: int) -> dict[str, Any]:
    """A distinct image as its first record, with the splits and labels of all its records."""
    rows = d.rows
    records = rows.records_of[u]
    first = _record(d, records[0])
    first["splits"] = sorted({str(rows.splits[r]) for r in records})
    first["copies"] = len(records)
    return first


def as_dict(d: "Diagnosis") -> dict[str, Any]:
    rows = d.rows
    lab = d.labels
    label_errors = [{**_record(d, int(lab.pool[i])), "predicted": rows.class_names[int(lab.predicted[i])],
                     "label_probability": float(lab.quality[i])} for i in lab.flagged.tolist()]
    held_exact = {s: sum(1 for r in d.leaked_exact if rows.splits[r] == s) for s in ("val", "test")}
    held_near = {s: sum(1 for r in d.leaked_near if rows.splits[r] == s and r not in d.leaked_exact)
                 for s in ("val", "test")}
    kinds: dict[str, int] = {}
    for k in d.kinds:
        kinds[k] = kinds.get(k, 0) + 1
    return {
        **rows.describe(),
        "threshold": d.config.threshold,
        "neighbours": d.method,
        "exact_duplicates": {
            "images_with_copies": len(d.exact), "extra_copies": sum(len(g.records) - 1 for g in d.exact),
            "cross_split": sum(1 for g in d.exact if g.cross_split),
            "conflicting_labels": sum(1 for g in d.exact if g.conflicting), "leaked": held_exact,
            "groups": [{"records": [_record(d, r) for r in g.records], "cross_split": g.cross_split,
                        "conflicting_labels": g.conflicting} for g in d.exact]},
        "near_duplicates": {
            "rule": dict(d.rule), "pairs": len(d.pairs), "by_kind": kinds, "leaked": held_near,
            "list": [{"a": _image(d, p.a), "b": _image(d, p.b), "cosine": p.cosine, "kind": k,
                      **({"signature": p.signature} if p.signature is not None else {}),
                      **({"aligned": p.aligned} if p.aligned is not None else {})}
                     for p, k in zip(d.pairs, d.kinds)]},
        "leaked": [{**_record(d, r), "copy_of": _record(d, d.leaked_exact[r] if r in d.leaked_exact
                                                          else d.leaked_near[r][0]),
                    "how": "exact" if r in d.leaked_exact else "near",
                    "cosine": 1.0 if r in d.leaked_exact else d.leaked_near[r][1]} for r in sorted(d.leaked)],
        "label_errors": {"judged": len(lab.pool), "flagged": len(lab.flagged),
                         "probe": {"head": d.config.probe, "folds": d.config.folds, "accuracy": lab.accuracy,
                                   "weight_decay": lab.weight_decay},
                         "neighbours": lab.neighbours, "list": label_errors},
        "outliers": {"fence": d.outliers.fence, "flagged": len(d.outliers.flagged),
                     "list": [{**_image(d, int(u)), "score": float(d.outliers.score[u])}
                              for u in d.outliers.flagged.tolist()]},
        "class_balance": d.balance,
        "impact": None if d.impact is None else {"head": d.impact_head, **d.impact},
        "manifest": d.manifest,
        "files": dict(d.files),
        "notes": list(rows.notes),
        "seconds": round(d.seconds, 2),
    }


def write(d: "Diagnosis", out: Path) -> None:
    """Write doctor.json and doctor.md into `out` (their names join `d.files`)."""
    d.files["json"] = str(out / DOCTOR_JSON)
    d.files["md"] = str(out / DOCTOR_MD)
    doc = d.to_dict()
    write_text_durably(out / DOCTOR_JSON, json.dumps(doc, indent=1, default=str) + "\n")
    write_text_durably(out / DOCTOR_MD, markdown(d, doc))


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")


def markdown(d: "Diagnosis", doc: dict[str, Any]) -> str:
    from transfer_engine.doctor.run import rule_text, summary_lines

    top = d.config.top
    lines = [f"# te doctor: {doc['dataset']}", "",
             f"{doc['records']} records ({', '.join(f'{s} {n}' for s, n in doc['splits'].items())}), "
             f"{doc['distinct_images']} distinct images, {doc['classes']} classes; features of {doc['backbone']} "
             f"(space `{doc['space'][:12]}`), data `{doc['data']}`. Nearest neighbours: {doc['neighbours']}.", "",
             "## Summary", ""]
    lines += [f"- {line}" for line in summary_lines(d)]
    if d.impact is not None:
        i = d.impact
        lines += ["", "## What the leaked test images do to the numbers", "",
                  f"Head: {d.impact_head}.", "", "| test images | images | accuracy [95%] |", "|---|---|---|"]
        for name, key in (("all", "all"), ("not copies of train/val images", "without_leaked"),
                          ("copies only", "leaked_only")):
            s = i[key]
            lines.append(f"| {name} | {s['images'] if s else 0} | "
                         f"{percent_interval(s['accuracy'], s['interval'], missing=TABLE_MISSING) if s else '-'} |")
        if i["all"] and i["without_leaked"] and i["leaked"]:
            lines += ["", f"Without the leaked images the test accuracy moves by "
                          f"{points(i['without_leaked']['accuracy'] - i['all']['accuracy'])}."]
    lines += ["", "## Exact duplicates (the same bytes)", ""]
    groups = doc["exact_duplicates"]["groups"]
    if groups:
        lines += ["| copies | splits | labels | files |", "|---|---|---|---|"]
        for g in groups[:top]:
            recs = g["records"]
            lines.append(f"| {len(recs)} | {', '.join(sorted({r['split'] for r in recs}))} | "
                         f"{_cell(', '.join(sorted({r['label'] for r in recs})))} | "
                         f"{_cell('; '.join(r['path'] for r in recs[:4]))}{' ...' if len(recs) > 4 else ''} |")
    else:
        lines.append("None.")
    lines += ["", f"## Near duplicates ({rule_text(d.rule)})", ""]
    near = doc["near_duplicates"]["list"]
    evidence = d.rule["by"] if d.rule["by"] in ("signature", "aligned") else None  # its score beside the cosine
    if near:
        if "near_duplicates" in d.files:
            lines += [f"![near duplicates]({Path(d.files['near_duplicates']).name})", ""]
        lines += [f"| {evidence + ' | ' if evidence else ''}cosine | kind | image | image | labels |",
                  f"|{'---|' if evidence else ''}---|---|---|---|---|"]
        for p in near[:top]:
            score = f"{p[evidence]:.4f} | " if evidence else ""
            lines.append(f"| {score}{p['cosine']:.4f} | {p['kind']} | {_cell(p['a']['path'])} ({p['a']['split']}) | "
                         f"{_cell(p['b']['path'])} ({p['b']['split']}) | {_cell(p['a']['label'])} / "
                         f"{_cell(p['b']['label'])} |")
    else:
        lines.append("None.")
    lab = doc["label_errors"]
    lines += ["", "## Likely label errors (train and val)", "",
              f"Out-of-fold probabilities of a {lab['probe']['head']} head ({lab['probe']['folds']}-fold over "
              f"train+val, accuracy {percent(lab['probe']['accuracy'])})"
              + (f", averaged with the labels of each image's {lab['neighbours']} nearest train+val neighbours"
                 if lab["neighbours"] else "")
              + ", judged by cleanlab's confident learning; most likely first. Test labels are not judged.", ""]
    if lab["list"]:
        if "label_errors" in d.files:
            lines += [f"![label errors]({Path(d.files['label_errors']).name})", ""]
        lines += ["| image | split | given | predicted | p(given) |", "|---|---|---|---|---|"]
        for e in lab["list"][:top]:
            lines.append(f"| {_cell(e['path'])} | {e['split']} | {_cell(e['label'])} | {_cell(e['predicted'])} | "
                         f"{e['label_probability']:.3f} |")
    else:
        lines.append("None.")
    lines += ["", "## Outliers", "", f"1 - mean cosine to the nearest images; flagged beyond {doc['outliers']['fence']:.3f} "
              "(the data set's third quartile + 3 x its interquartile range).", ""]
    if doc["outliers"]["list"]:
        lines += ["| image | split | label | score |", "|---|---|---|---|"]
        for o in doc["outliers"]["list"][:top]:
            lines.append(f"| {_cell(o['path'])} | {o['split']} | {_cell(o['label'])} | {o['score']:.3f} |")
    else:
        lines.append("None.")
    lines += ["", "## Class balance", "", "| class | train | val | test |", "|---|---|---|---|"]
    for name, c in doc["class_balance"]["counts"].items():
        lines.append(f"| {_cell(name)} | {c['train']} | {c['val']} | {c['test']} |")
    if doc["manifest"]:
        m = doc["manifest"]
        lines += ["", "## Manifest", "", f"`{d.files['manifest']}`: {m['rows']} images; {m['dropped']} left out, "
                  f"{m['moved']} moved to train. `te extract --data {d.files['manifest']} --cache ...` reads it "
                  "(every row reused from the cache)."]
    if doc["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"
