"""Each notebook's cost banner against the time the notebook really took, on a finished course run.

    python benchmarks/banner_vs_measured.py runs/laptop            # a table
    python benchmarks/banner_vs_measured.py runs/laptop --json     # the same as JSON

The banner (:mod:`dwf_lab.course.banner`) is shown by each notebook's setup cell, before the
notebook trains or attacks anything; its "time" row is an estimate of the run's own work (training,
evaluation, attacks), rounded as :func:`dwf_lab.course.banner.duration` rounds it ("about 7 min":
6.5 to 7.5 minutes), and leaves out "the notebook's own quick checks" (exercises, figures, its
own small models). The measured time is the notebook's wall time in the run's
``course_times.json`` (:func:`dwf_lab.course.runner.record_time`): kernel start to last cell.
So a notebook whose own work is most of its time (00, 08) has a banner of "nothing to train"
and a measured time of a minute or two: the table prints both, and compares only the notebooks
whose banner gives a number. Where the course runner kept its forecast (the whole course priced
before the first notebook, :mod:`dwf_lab.course.forecast`), each notebook's share of it is printed too.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

# the inverse of dwf_lab.course.banner.duration: (low, high) seconds of each rounded form
_FORMS = [
    (re.compile(r"under a second"), lambda m: (0.0, 1.0)),
    (re.compile(r"about (\d+) h (\d+) min"),
     lambda m: ((int(m[1]) * 60 + int(m[2]) - 0.5) * 60, (int(m[1]) * 60 + int(m[2]) + 0.5) * 60)),
    (re.compile(r"about (\d+) min"), lambda m: ((int(m[1]) - 0.5) * 60, (int(m[1]) + 0.5) * 60)),
    (re.compile(r"about (\d+) s"), lambda m: (int(m[1]) - 0.5, int(m[1]) + 0.5)),
]


def banner_estimate(notebook: Path) -> dict | None:
    """The first cost banner in an executed notebook: its headline and its "time" row, with the
    rounded estimate as (low, high) seconds (None when it names no number)."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            text = out.get("data", {}).get("text/plain")
            text = "".join(text) if isinstance(text, list) else text
            if not text or not re.match(r"Notebook \d\d: ", text):
                continue
            time_row = next((ln.strip()[len("time"):].strip() for ln in text.splitlines()
                             if ln.strip().startswith("time ")), "")
            seconds = None
            for pattern, bounds in _FORMS:
                m = pattern.match(time_row)
                if m:
                    seconds = bounds(m)
                    break
            return {"headline": text.splitlines()[0], "time": time_row, "estimate_s": seconds}
    return None


def compare(run: Path) -> list[dict]:
    times = json.loads((run / "course_times.json").read_text(encoding="utf-8"))
    forecast = ((times.get("forecast") or {}).get("notebooks")) or {}
    rows = []
    for key, rec in times["notebooks"].items():
        path = run / "notebooks" / rec["notebook"]
        banner = banner_estimate(path) if path.is_file() else None
        est = banner and banner["estimate_s"]
        rows.append({"notebook": key, "measured_s": rec["seconds"], "trained": rec.get("trained", []),
                     "forecast_s": forecast.get(key),
                     "banner": banner and banner["time"], "estimate_low_s": est and est[0],
                     "estimate_high_s": est and est[1],
                     "measured_over_estimate": est and round(rec["seconds"] / ((est[0] + est[1]) / 2), 2)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished course run's folder (runs/<run>)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    if not (args.run / "course_times.json").is_file():
        print(f"banner_vs_measured: {args.run} has no course_times.json; run `python -m dwf_lab course` "
              "into it first", file=sys.stderr)
        return 2
    rows = compare(args.run)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'nb':<3} {'measured':>9}  {'forecast':>9}  {'banner (time row)':<60} {'measured/banner':>15}")
    for r in rows:
        ratio = "" if r["measured_over_estimate"] is None else f"{r['measured_over_estimate']:.2f}"
        fc = "" if r["forecast_s"] is None else f"{r['forecast_s'] / 60:.1f} m"
        print(f"{r['notebook']:<3} {r['measured_s'] / 60:>7.1f} m  {fc:>9}  {(r['banner'] or '(no banner)')[:60]:<60} "
              f"{ratio:>15}")
    total = sum(r["measured_s"] for r in rows)
    priced = [r for r in rows if r["estimate_low_s"] is not None]
    lo, hi = sum(r["estimate_low_s"] for r in priced), sum(r["estimate_high_s"] for r in priced)
    print(f"all {len(rows)} notebooks: {total / 60:.1f} min measured; the {len(priced)} with a priced banner: "
          f"{sum(r['measured_s'] for r in priced) / 60:.1f} min measured against {lo / 60:.1f}-{hi / 60:.1f} "
          "min in their banners (the run's own work only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
