"""The generation prompts of an ``eavss hallucination`` run as token ids, for ``gen_overhead.py --prompts``.

Reads the run's ``samples.jsonl``, keeps the generated samples of one few-shot prefix (default
``qa``: NQ-open and TriviaQA, 1,600 prompts in the default run) and tokenises their prefix and
question suffixes as the analysis does (:func:`eavss.recipes.hallucination.tokenise`: the prefix
with special tokens, the suffix without)::

    PYTHONPATH=src python3 benchmarks/prompts_from_samples.py runs/h/samples.jsonl \\
        --tokenizer ~/.cache/eavss/models/b179c9523d0e6a0f --out .dev/speed/prompts_qa.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("samples", help="samples.jsonl of an eavss hallucination run")
    ap.add_argument("--tokenizer", required=True, help="tokenizer folder of the run's model")
    ap.add_argument("--prefix", default="qa", help="few-shot prefix whose prompts are kept (qa | qa_options)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    from eavss.recipes.hallucination import PREFIXES

    if args.prefix not in PREFIXES:
        sys.exit(f"unknown prefix {args.prefix!r}; choose one of {sorted(PREFIXES)}")
    try:
        rows = [json.loads(line) for line in Path(args.samples).read_text().splitlines() if line.strip()]
        gen = [r for r in rows if r["kind"] != "teacher_forced" and r["prefix"] == args.prefix]
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"{args.samples}: not an eavss hallucination samples.jsonl ({e!r}); pass the run's samples.jsonl")
    try:
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
    except Exception as e:  # noqa: BLE001 - any loading failure: one line
        sys.exit(f"--tokenizer {args.tokenizer}: cannot load a tokenizer there ({type(e).__name__}); pass the run's "
                 "model folder")
    if not gen:
        sys.exit(f"no generated samples with prefix {args.prefix!r} in {args.samples}")
    out = {"source": str(args.samples), "prefix_name": args.prefix,
           "prefix": tok(PREFIXES[args.prefix], add_special_tokens=True)["input_ids"],
           "suffixes": [tok(r["prompt_suffix"], add_special_tokens=False)["input_ids"] for r in gen],
           "stops_in_run": {k: sum(r["stop"] == k for r in gen) for k in ("newline", "eos", "length")}}
    tmp = Path(args.out + ".part")
    tmp.write_text(json.dumps(out))
    tmp.replace(args.out)  # never a half-written file
    print(f"{len(gen)} prompts, prefix {len(out['prefix'])} tokens, stops in the run {out['stops_in_run']} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
