#!/usr/bin/env python3
"""Training through noise (issue 24): does `train --drop-suspects-after` help, and does
retraining on `clean`'s output? On generated identities with known noise (label noise
20 %, 40 %, 80 %; outliers 20 %; same seed), softmax-only (λ 0) beside softmax + center
loss, each trained on the noisy set, on the noisy set with --drop-suspects-after
(--drop-suspects-from center and all; softmax-only: all, as center changes nothing
there), and retrained on the output of `clean` run on the noisy-set model of the same
loss; plus both losses on the clean set (docs/cleaning.md).

The option was measured with this script and then removed, as it did not help
(docs/cleaning.md); where `train` has no --drop-suspects-after its columns are "-".

    python scripts/noise_table.py --out runs/noise [--identities 100 --epochs 12]
    python scripts/noise_table.py --out runs/noise_s2 --seed 2
    python scripts/noise_table.py --mean-of runs/noise runs/noise_s2

Writes OUT/data_<set>/ (the generated trees), OUT/<set>-<loss>-<training>/ (each run),
OUT/clean_<set>-<loss>/ (`clean`'s output), OUT/table.md and prints it: held-out
(identities never trained on) TAR@FAR=1e-3 / 1-NN of every run, and precision / recall /
F1 of `clean`'s flags against noise.json; OUT/results.json for --mean-of. A run whose
metrics.json exists is not run again, so an interrupted table continues where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

SETS = {  # name: synthetic's noise options; in the order they are run
    "clean": [],
    "ln40": ["--label-noise", "0.4"],
    "ln80": ["--label-noise", "0.8"],
    "ln20": ["--label-noise", "0.2"],
    "out20": ["--outliers", "0.2"],
}
SET_NAMES = {
    "clean": "clean (no noise)",
    "ln20": "label noise 20 %",
    "ln40": "label noise 40 %",
    "ln80": "label noise 80 %",
    "out20": "outliers 20 %",
}


def run(cmd: list[str], log: Path) -> None:
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"noise_table: failed ({log}): {' '.join(cmd)}")


def heldout(out: Path) -> tuple[float, float]:
    final = json.loads((out / "metrics.json").read_text())["final"]
    return final["val_unseen_tar@far=0.001"], final["val_unseen_1nn_acc"]


def flag_quality(clean_out: Path, noise_json: Path) -> dict:
    """Precision, recall, F1 of `clean`'s flags (report.csv) against noise.json."""
    truth = {f["path"] for f in json.loads(noise_json.read_text())["files"]}
    with open(clean_out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    flagged = {r["path"] for r in rows if r["flagged"] == "1"}
    hit = len(flagged & truth)
    p, r = hit / max(len(flagged), 1), hit / max(len(truth), 1)
    threshold = json.loads((clean_out / "summary.json").read_text())["threshold_deg"]
    return {"p": p, "r": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "cut": threshold}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/noise")
    p.add_argument("--identities", type=int, default=100)
    p.add_argument("--train-per-identity", type=int, default=30)
    p.add_argument("--val-per-identity", type=int, default=8)
    p.add_argument("--unseen", type=int, default=40)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--warmup", type=int, default=6, help="--drop-suspects-after")
    p.add_argument("--lam", type=float, default=0.005, help="center loss's λ")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    p.add_argument(
        "--mean-of",
        nargs="+",
        metavar="OUT",
        help="train nothing: print the mean table of these finished OUT folders (seeds)",
    )
    args = p.parse_args()
    if args.mean_of:
        print(mean_table([Path(d) for d in args.mean_of]))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    faces = [py, "-m", "centerloss_ext.train.faces"]
    common = [
        "--arch", "compact", "--image-size", "32", "--feature-dim", "64", "--batch-size",
        "32", "--workers", "0", "--device", "cpu", "--epochs", str(args.epochs), "--lr",
        "0.05", "--eval-every", str(args.epochs), "--no-progress", "--seed", str(args.seed),
    ]  # fmt: skip
    losses = {"softmax": "0", "center": str(args.lam)}
    usage = subprocess.run([*faces, "train", "--help"], capture_output=True, text=True).stdout
    has_option = "--drop-suspects-after" in usage
    times = out / "seconds.json"  # every run's and clean's wall time, over all passes
    seconds: dict = json.loads(times.read_text()) if times.exists() else {}

    def train(name: str, data: Path, extra: list[str]) -> tuple[float, float]:
        target = out / name
        if not (target / "metrics.json").exists():
            t0 = time.time()
            print(f"[{time.strftime('%H:%M:%S')}] train {name}", flush=True)
            cmd = [*faces, "train", "--input-dir", str(data), "--out", str(target), *common]
            run([*cmd, *extra, "--overwrite"], out / f"{name}.log")
            seconds[name] = time.time() - t0
            times.write_text(json.dumps(seconds, indent=1))
        return heldout(target)

    results: dict = {}
    for s in args.sets:
        data = out / f"data_{s}"
        if not (data / "noise.json").exists():
            gen = [
                py, "-m", "centerloss_ext.train.synthetic", str(data),
                "--identities", str(args.identities),
                "--train-per-identity", str(args.train_per_identity),
                "--val-per-identity", str(args.val_per_identity), "--unseen", str(args.unseen),
                "--image-size", "32", "--seed", str(args.seed), *SETS[s],
            ]  # fmt: skip
            run(gen, out / f"data_{s}.log")
        for loss, lam in losses.items():
            r: dict = {}
            lam_opt = ["--lambda", lam]
            r["noisy"] = train(f"{s}-{loss}-noisy", data, lam_opt)
            drop = ["--drop-suspects-after", str(args.warmup)]
            modes = ("center", "all") if loss == "center" else ("all",)
            modes = modes if has_option else ()
            for mode in modes:  # on the clean set too: what the option costs without noise
                r[f"drop-{mode}"] = train(
                    f"{s}-{loss}-drop-{mode}", data, [*lam_opt, *drop, "--drop-suspects-from", mode]
                )
            if s == "clean":
                results[s, loss] = r
                continue
            cleaned = out / f"clean_{s}-{loss}"
            if not (cleaned / "summary.json").exists():
                if cleaned.exists():
                    shutil.rmtree(cleaned)
                print(f"[{time.strftime('%H:%M:%S')}] clean {s}-{loss}", flush=True)
                t0 = time.time()
                ckpt = out / f"{s}-{loss}-noisy" / "checkpoint.pt"
                run(
                    [*faces, "clean", "--checkpoint", str(ckpt), "--input-dir", str(data),
                     "--out", str(cleaned), "--workers", "0", "--device", "cpu"],
                    out / f"clean_{s}-{loss}.log",
                )  # fmt: skip
                seconds[f"clean_{s}-{loss}"] = time.time() - t0
                times.write_text(json.dumps(seconds, indent=1))
            r["flags"] = flag_quality(cleaned, data / "noise.json")
            r["retrained"] = train(f"{s}-{loss}-retrained", cleaned, lam_opt)
            results[s, loss] = r
            save(out, args, results, sum(seconds.values()))
    text = save(out, args, results, sum(seconds.values()))
    print(text)


def save(out: Path, args: argparse.Namespace, results: dict, wall: float) -> str:
    """OUT/results.json (for --mean-of) and OUT/table.md; returns the table."""
    title = (
        f"{args.identities} identities x {args.train_per_identity} train/ images, "
        f"{args.unseen} held-out identities x {args.val_per_identity} images; {args.epochs} "
        f"epochs, --drop-suspects-after {args.warmup}, λ {args.lam}, seed {args.seed}; "
        f"wall {wall / 60:.0f} min (runs and `clean`, one at a time)"
    )
    record = {"title": title, "results": [[s, loss, r] for (s, loss), r in results.items()]}
    (out / "results.json").write_text(json.dumps(record, indent=1))
    text = table(title, results)
    (out / "table.md").write_text(text)
    return text


def mean_table(outs: list[Path]) -> str:
    """The table of the means over ``outs`` (the rows and cells that all of them have)."""
    records = [json.loads((d / "results.json").read_text()) for d in outs]
    runs = [{(s, loss): r for s, loss, r in rec["results"]} for rec in records]
    results: dict = {}
    for key in runs[0]:
        if not all(key in r for r in runs):
            continue
        cells = [r[key] for r in runs]
        mean: dict = {}
        for name, value in cells[0].items():
            values = [c.get(name) for c in cells]
            if any(v is None for v in values):
                continue
            if isinstance(value, dict):
                mean[name] = {k: sum(v[k] for v in values) / len(values) for k in value}
            elif all(None not in v for v in values):
                mean[name] = [sum(v[i] for v in values) / len(values) for i in range(2)]
        results[key] = mean
    title = f"mean of {len(outs)} seeds ({', '.join(map(str, outs))}); first: {records[0]['title']}"
    return table(title, results)


def table(title: str, results: dict) -> str:
    def cell(v) -> str:
        if v is None or v[0] is None or v[1] is None:
            return "-"
        return f"{v[0]:.3f} / {v[1]:.2f}"

    lines = [
        title,
        "",
        "| set | loss | `clean`'s flags P / R / F1 (cut) | clean set | noisy set "
        "| + drop (center) | + drop (all) | retrained on `clean`'s output |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (s, loss), r in results.items():
        f = r.get("flags")
        flags = f"{f['p']:.2f} / {f['r']:.2f} / {f['f1']:.2f} ({f['cut']:.0f}°)" if f else "-"
        base = results.get(("clean", loss), {}).get("noisy")
        if s == "clean":
            lines.append(
                f"| {SET_NAMES[s]} | {loss} | - | {cell(r.get('noisy'))} | - "
                f"| {cell(r.get('drop-center'))} | {cell(r.get('drop-all'))} | - |"
            )
            continue
        lines.append(
            f"| {SET_NAMES[s]} | {loss} | {flags} | {cell(base)} | {cell(r.get('noisy'))} "
            f"| {cell(r.get('drop-center'))} | {cell(r.get('drop-all'))} "
            f"| {cell(r.get('retrained'))} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
