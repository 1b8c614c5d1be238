"""Predict a property with uncertainty for structures (paper Alg. 3).

SOURCES are anything crysdiff reads (CIF/POSCAR files, folders, CSV/JSON/extxyz datasets). One row
per structure: id, source, mean, std, p2.5, p97.5, unit, flags (empty, or why the crystal is unlike
the model's training data: an unseen or rare element, a cell size, volume per atom, smallest
distance or vacuum beyond what the training crystals cover; docs/method.md "Flags"). Bad records
are reported on stderr and skipped. --model takes a fine-tuned checkpoint or a bundled model name (--list-models). Repeat
--model to predict with an ensemble of models of the same target (e.g. one fine-tuning run per
--seed): S samples from each, pooled, plus a std_models column (how much the models disagree).

Examples:
  crysdiff predict --model formation_energy_per_atom examples/structures --samples 100 --out preds.csv
  crysdiff predict --model run-s0/model.ckpt --model run-s1/model.ckpt --model run-s2/model.ckpt my_cifs/
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from crysdiff.commands._common import UsageError, check_device, fail, run_guarded

OUT_FORMATS = (".csv", ".json")


def check_out(out: Path | None) -> None:
    """``--out`` ends in an accepted extension and can be written: its folder exists or can be made
    (no regular file on the way) and a file can be created there. Nothing is left behind."""
    import tempfile

    if out is None:
        return
    if out.suffix.lower() not in OUT_FORMATS:
        raise UsageError(f"--out {out}: unknown extension {out.suffix or '(none)'!r}; accepted: {', '.join(OUT_FORMATS)}")
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; expected a file name ending in {' or '.join(OUT_FORMATS)}")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"--out {out}: cannot be written, {folder} is a file, not a folder")
    if out.exists() and not os.access(out, os.W_OK):
        raise UsageError(f"--out {out}: the file exists and cannot be written")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UsageError(f"--out {out}: cannot be written in {folder} ({error.strerror or error})") from None


def check_arguments(args) -> None:
    """Everything that can be checked before a model is loaded or a structure read."""
    if args.samples < 2:
        raise UsageError(f"--samples {args.samples}: at least 2 samples per crystal are needed (the 95% interval and "
                         "the spread come from the samples)")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: expected a positive number of crystals per batch")
    check_device(args.device)
    check_out(args.out)
    from crysdiff.bundled import bundled_models

    for model in args.model:
        if not Path(model).is_file() and model not in bundled_models():
            raise UsageError(f"--model {model}: neither a checkpoint file nor a bundled model name "
                             f"(bundled: {', '.join(bundled_models()) or 'none'})")


def add_arguments(parser) -> None:
    parser.add_argument("sources", nargs="*", help="structure files, folders or datasets")
    parser.add_argument("--model", action="append", help="fine-tuned checkpoint path or bundled model name; repeat it "
                                                         "for an ensemble of models of the same target")
    parser.add_argument("--samples", type=int, default=100, help="samples of the reverse chain per crystal (default 100)")
    parser.add_argument("--out", type=Path, help="output file (.csv or .json); default: print a table")
    parser.add_argument("--json", action="store_true", help="write JSON (records) instead of CSV")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--strict", action="store_true", help="fail on the first bad record")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--list-models", action="store_true", help="list the bundled models and exit")
    parser.add_argument("--raw-interval", action="store_true",
                        help="report the chain's own spread, without the calibration fitted on the model's validation "
                             "set at fine-tuning (see docs/method.md, 'Calibrated intervals')")
    parser.add_argument("--as-drawn", action="store_true",
                        help="ensembles: pool the members' samples unchanged, without the small-ensemble correction "
                             "that widens the spread between members (see docs/method.md, 'Seed ensembles')")


def run(args) -> int:
    from crysdiff.bundled import bundled_models

    if args.list_models:
        for name, path in bundled_models().items():
            print(f"{name}\t{path}")
        return 0
    if not args.model or not args.sources:
        return fail("predict needs --model and at least one source (see crysdiff predict --help)", 2)

    def go():
        from crysdiff.predict import load

        check_arguments(args)
        predictor = load(args.model, device=args.device)
        _warn_uncalibrated(predictor, args)
        predictor.widen = not args.as_drawn
        predictor.calibrated = not args.raw_interval
        frame, errors = predictor.predict(args.sources, samples=args.samples, batch_size=args.batch_size, seed=args.seed,
                                          strict=args.strict, progress=True, return_errors=True)
        for error in errors:
            print(f"skipped {error.source} [{error.record}]: {error.reason}", file=sys.stderr)
        if frame.attrs.get("flags_note"):
            print(f"note: {frame.attrs['flags_note']}", file=sys.stderr)
        if frame.empty:
            return fail(f"no usable structure in {', '.join(args.sources)} ({len(errors)} skipped)")
        as_json = args.json or (args.out is not None and args.out.suffix == ".json")
        if args.out is None:
            print(frame.to_json(orient="records", indent=1) if as_json else frame.to_string(index=False))
        else:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            if as_json:
                args.out.write_text(json.dumps({"target": predictor.target, "unit": predictor.unit,
                                                "models": [member.path for member in predictor.members],
                                                "pooling": ("as drawn" if args.as_drawn else "widened")
                                                if len(predictor.members) > 1 else None,
                                                "predictions": frame.to_dict(orient="records"),
                                                "skipped": [e.as_dict() for e in errors]}, indent=1))
            else:
                frame.to_csv(args.out, index=False)
            print(f"{len(frame)} predictions of {predictor.target} ({predictor.unit}) written to {args.out}"
                  + (f"; {len(errors)} records skipped" if errors else ""), file=sys.stderr)
        return 0

    return run_guarded(go)


def _warn_uncalibrated(predictor, args) -> None:
    """A model fine-tuned without validation crystals (or with calibrate=false) has an interval that was
    never checked against data: say so (the output columns are unchanged)."""
    from crysdiff.notices import warn_once

    if args.raw_interval:
        return
    infos = predictor.info.get("members", [predictor.info])
    for member, info in zip(predictor.members, infos):
        if member.model.is_diffusion and not info.get("calibrated", True):
            warn_once(f"{info['path']}: the 95% interval is uncalibrated (the model was fine-tuned without "
                      "validation crystals or with calibrate=false); refit it with crysdiff calibrate")
