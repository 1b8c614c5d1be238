"""Evaluate crystal structure prediction against known structures (the DiffCSP benchmark).

For each test crystal, K structures are generated for its composition (same number of atoms) and
compared with pymatgen StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3). Reports the one-shot
match rate (first sample) and best-of-K match rate as fractions, the mean normalised RMSE of the
matches, counts and timing: OUT/summary.json and OUT/per_structure.csv.

Example:
  crysdiff evaluate-csp --model runs/perov/model.ckpt --data ../shared/data/perov_5/test.csv.gz --samples 20 --limit 500 --out runs/perov/csp
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from crysdiff.commands._common import check_device, run_guarded


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="pre-training checkpoint")
    parser.add_argument("--data", nargs="+", required=True, help="reference structures")
    parser.add_argument("--samples", type=int, default=20, help="K, samples per reference (best-of-K)")
    parser.add_argument("--limit", type=int, help="evaluate a seeded random subset of this many references")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corrector-steps", type=int, default=1)
    parser.add_argument("--step-lr", type=float)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", help="cpu, cuda ... (default: cuda when available)")


def run(args) -> int:
    def go():
        check_device(args.device)
        import numpy as np
        import pandas as pd
        import torch
        from pymatgen.analysis.structure_matcher import StructureMatcher

        from crysdiff.cache import load_dataset
        from crysdiff.csp import MATCHER_SETTINGS, CSPResult, generate, match
        from crysdiff.pretrain import load_pretrained
        from crysdiff.sampling import require_joint

        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, diffusion, config, _ = load_pretrained(args.model, map_location=device)
        require_joint(diffusion, str(args.model))
        cache = load_dataset(args.data)
        indices = np.arange(len(cache))
        if args.limit and args.limit < len(indices):
            indices = np.sort(np.random.default_rng(args.seed).choice(indices, args.limit, replace=False))
        references = [cache.crystal(int(i)) for i in indices]
        jobs = [ref.atomic_numbers for ref in references for _ in range(args.samples)]
        start = time.perf_counter()
        generated = generate(model, diffusion, jobs, batch_size=args.batch_size, seed=args.seed,
                             corrector_steps=args.corrector_steps, step_lr=args.step_lr, device=device, progress=True)
        sampling_seconds = time.perf_counter() - start
        matcher = StructureMatcher(**MATCHER_SETTINGS)
        results = []
        for r, ref in enumerate(references):
            rms = [match(g, ref, matcher) for g in generated[r * args.samples:(r + 1) * args.samples]]
            found = [x for x in rms if x is not None]
            results.append(CSPResult(ref.id, ref.formula, ref.num_atoms, rms[0], min(found) if found else None, len(found)))
        table = pd.DataFrame([r.as_row() for r in results])
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "per_structure.csv", index=False)
        summary = {
            "model": str(args.model), "data": [str(d) for d in args.data], "count": len(results), "samples": args.samples,
            "match_rate": float(table["one_shot_match"].mean()), "rmse": float(table["one_shot_rmse"].mean()),
            f"match_rate_best_of_{args.samples}": float(table["best_match"].mean()),
            f"rmse_best_of_{args.samples}": float(table["best_rmse"].mean()),
            "sampling_seconds": sampling_seconds, "seconds_per_structure": sampling_seconds / max(1, len(jobs)),
            "matcher": MATCHER_SETTINGS, "seed": args.seed, "skipped_references": len(cache.skipped),
        }
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))

    return run_guarded(go)
