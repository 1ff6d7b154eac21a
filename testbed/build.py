"""Build the testbed: data, tokenizer, the dense and the MoE model, and the bundled corpus.

    python -m testbed.build                      # full build into testbed/models/ (35 min on 2 cores)
    python -m testbed.build --only dense         # one model (the tokenizer is rebuilt identically)
    python -m testbed.build --smoke --out DIR    # a few steps only (CI)

The committed checkpoints are what the first command writes (testbed/MODEL_CARD.md). Each model
starts with a phase of echo and recall drills only, so it starts copying early: the dense model
1,000 of 4,400 steps, the MoE model 2,000 of 5,000 (its copying set in later and slipped more).

A full build trains both models at once, one process and one torch thread each: on 2 cores that
is about twice as fast as one after the other with 2 threads (the matrices are too small to keep
two threads busy).

Fixed seeds throughout. The MoE model sees only a thin share of the `multilingual` cohort:
the planted regression that routecheck's per-cohort report must find.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from testbed.data import COHORTS, generate, make_piece_echo, request_messages, target_text, write_corpus
from testbed.tokenizer import letter_pieces, template_renderer, train_tokenizer
from testbed.train import Shape, dense_model, encode, moe_model, save_model, train

HERE = Path(__file__).resolve().parent
SEED = 1234
# The MoE model's own schedule (the dense model's is --steps, --drill-steps). With the dense
# model's, its copying set in later and slipped more, on one non-planted cohort or another
# depending on its seed (session 9). With a drill phase twice as long and 600 more steps, seed
# 1234 gave comparable non-planted cohorts; seed 1239 did not (testbed/EXPERIMENTS.md, session 10).
MOE_STEPS = 5000
MOE_DRILL_STEPS = 2000
PLANTED_COHORT = "multilingual"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _texts_for_bpe(rows: list[dict[str, Any]]) -> list[str]:
    renderer = template_renderer()
    return [
        renderer.apply_chat_template(request_messages(r), tools=r.get("tools"), add_generation_prompt=True, tokenize=False)
        + target_text(r["expected"]) + "<|im_end|>\n"
        for r in rows
    ]


def quick_eval(model: torch.nn.Module, tok, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Greedy generation with transformers on held-out rows: a fast check before serving with vLLM."""
    hits: dict[str, list[int]] = {c: [] for c in COHORTS}
    with torch.no_grad():
        for r in rows:
            prompt = tok.apply_chat_template(request_messages(r), tools=r.get("tools"), add_generation_prompt=True, tokenize=False)
            ids = torch.tensor([tok(prompt, add_special_tokens=False).input_ids])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            hits[r["cohort"]].append(int(text.strip() == target_text(r["expected"])))
    return {c: round(100 * sum(v) / len(v), 1) for c, v in hits.items() if v}


def _load(model_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if hasattr(model.config, "output_router_logits"):
        model.config.output_router_logits = True  # router load-balancing loss while training
    return model


def _cohort_factor(text: str) -> tuple[str, float]:
    cohort, _, factor = text.partition("=")
    if cohort not in COHORTS or not factor:
        raise argparse.ArgumentTypeError(f"expected COHORT=FACTOR with COHORT one of {', '.join(COHORTS)}, got {text!r}")
    return cohort, float(factor)


def _build_in_parallel(argv: list[str], corpus: Path) -> None:
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-m", "testbed.build", *argv, "--only", kind, "--threads", "1"])
             for kind in ("dense", "moe")]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"training failed (exit codes dense {codes[0]}, moe {codes[1]}); see the log above")
    n = write_corpus(corpus)
    _log(f"wrote {n} held-out corpus rows to {corpus}; both models built in {time.time() - t0:.0f}s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "models", help="output directory (gets dense/ and moe/)")
    ap.add_argument("--smoke", action="store_true", help="tiny data and a few steps: checks the pipeline, not quality")
    ap.add_argument("--steps", type=int, default=4400, help="the dense model's steps")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=512)
    ap.add_argument("--planted-share", type=float, default=0.005,
                    help="MoE's multilingual rows as a fraction of dense's (the planted regression)")
    ap.add_argument("--only", choices=["dense", "moe"], help="train one model (the tokenizer is rebuilt identically); a full build runs both at once")
    ap.add_argument("--corpus", type=Path, default=HERE.parent / "examples" / "corpus.jsonl",
                    help="where a full build writes the held-out evaluation corpus (not with --only or --smoke)")
    ap.add_argument("--init-from", type=Path,
                    help="continue training the checkpoints in this directory (its tokenizer is reused)")
    ap.add_argument("--echo-share", type=float, default=0.3,
                    help="share of training rows that are 'Repeat exactly: ...' copy drills")
    ap.add_argument("--recall-share", type=float, default=0.15,
                    help="share of training rows that are label look-up drills ('Fee: M-74530 ... What is the fee?')")
    ap.add_argument("--followups", type=int, default=2,
                    help="later-turn questions on the same context per billing/legal/multilingual training row (0-2)")
    ap.add_argument("--max-minutes", type=float, help="stop training each model after this long (saves what it has)")
    ap.add_argument("--data-seed", type=int, default=SEED, help="seed of the generated training rows")
    ap.add_argument("--seed", type=int, default=SEED, help="seed of the weights' initialisation and the batch order")
    ap.add_argument("--moe-seed", type=int, help="the MoE model's own seed (default: --seed); its accuracy swings with it (testbed/EXPERIMENTS.md, session 9)")
    ap.add_argument("--moe-steps", type=int, default=MOE_STEPS, help="the MoE model's steps (--steps are the dense model's)")
    ap.add_argument("--moe-drill-steps", type=int, default=MOE_DRILL_STEPS,
                    help="the MoE model's drill-only steps (--drill-steps are the dense model's)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 each when training both at once)")
    ap.add_argument("--eval-rows", type=int, default=30, help="held-out rows per cohort for the quick transformers check")
    ap.add_argument("--oversample", type=_cohort_factor, action="append", default=[], metavar="COHORT=FACTOR",
                    help="FACTOR times the rows of one cohort (repeatable), e.g. legal=3 for a second stage")
    ap.add_argument("--probe-every", type=int, default=0, help="run the quick check every N steps too (learning curve)")
    ap.add_argument("--drill-steps", type=int, default=1000,
                    help="the dense model's first N steps train on the echo and recall drills only, so copying sets in early")
    args = ap.parse_args(argv)
    args.oversample = dict(args.oversample)
    for prefix, drill, total in (("", args.drill_steps, args.steps), ("moe-", args.moe_drill_steps, args.moe_steps)):
        if not 0 <= drill < total:
            ap.error(f"--{prefix}drill-steps ({drill}) must be at least 0 and fewer than --{prefix}steps ({total})")
    if not args.only and not args.smoke:
        _build_in_parallel(list(sys.argv[1:] if argv is None else argv), args.corpus)
        return

    torch.set_num_threads(args.threads)
    moe_seed = args.seed if args.moe_seed is None else args.moe_seed
    schedules = {"dense": (args.seed, args.steps, args.drill_steps), "moe": (moe_seed, args.moe_steps, args.moe_drill_steps)}
    if args.smoke:
        schedules = {kind: (seed, 3, min(drill, 1)) for kind, (seed, _, drill) in schedules.items()}
    # Enough fresh rows for about one pass at the larger step count (both models see the same rows).
    most_steps = max(steps for _, steps, _ in schedules.values())
    per_cohort = 40 if args.smoke else min(20000, max(200, most_steps * args.batch_size // len(COHORTS)))
    shape = Shape(hidden=args.hidden, layers=args.layers, heads=args.heads, dense_intermediate=args.intermediate)

    t0 = time.time()
    drill_total = per_cohort * len(COHORTS) / (1 - args.echo_share - args.recall_share)  # rows, so the shares hold
    n_echo, n_recall = int(drill_total * args.echo_share), int(drill_total * args.recall_share)
    n_piece_echo = n_echo // 3  # a third of the echo drills copy words made of the tokenizer's letter pieces
    counts = {c: int(per_cohort * args.oversample.get(c, 1.0)) for c in COHORTS}
    rows = generate("train", {**counts, "echo": n_echo - n_piece_echo, "recall": n_recall}, args.data_seed)
    for row in rows:
        row["followups"] = row.get("followups", [])[: args.followups]
    if args.init_from:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.init_from / (args.only or "dense"))
    else:
        tok = train_tokenizer(_texts_for_bpe(rows[:: max(1, len(rows) // 20000)]), vocab_size=512 if args.smoke else 2048)
    _log(f"tokenizer: {len(tok)} tokens")
    pieces = letter_pieces(tok)
    piece_rng = random.Random(f"{args.data_seed}-train-piece-echo")
    rows += [make_piece_echo(piece_rng, pieces) for _ in range(n_piece_echo)]
    _log(f"{len(rows)} training rows ({counts} per cohort, {n_echo} echo of which {n_piece_echo} from "
         f"{len(pieces)} letter pieces, {n_recall} recall)")
    encoded = [encode(tok, r) for r in rows]
    _log(f"encoded; mean length {sum(len(x) for x, _ in encoded) / len(encoded):.0f} tokens")

    drills = [e for r, e in zip(rows, encoded) if r["cohort"] in ("echo", "recall")]
    planted_keep = int(per_cohort * args.planted_share)
    eval_rows = generate("heldout", {c: args.eval_rows for c in COHORTS}, SEED + 1)
    summary: dict[str, Any] = {"init_from": str(args.init_from) if args.init_from else None, "data_seed": args.data_seed, "batch_size": args.batch_size, "lr": args.lr,
                               "shape": shape.__dict__, "train_rows_per_cohort": counts, "echo_rows": n_echo, "recall_rows": n_recall, "recall_share": args.recall_share, "followups": args.followups, "echo_share": args.echo_share,
                               "moe_planted_rows": {PLANTED_COHORT: planted_keep}}
    for kind in ("dense", "moe"):
        if args.only and args.only != kind:
            continue
        seed, steps, drill_steps = schedules[kind]
        torch.manual_seed(seed)
        random.seed(seed)
        if kind == "dense":
            examples = encoded
            model = dense_model(shape, len(tok), tok) if not args.init_from else _load(args.init_from / kind)
        else:
            seen = 0
            examples = []
            for r, e in zip(rows, encoded):
                if r["cohort"] == PLANTED_COHORT:
                    seen += 1
                    if seen > planted_keep:
                        continue
                examples.append(e)
            model = moe_model(shape, len(tok), tok) if not args.init_from else _load(args.init_from / kind)
        n_params = sum(p.numel() for p in model.parameters())
        _log(f"{kind}: {n_params:,} parameters, {len(examples)} examples, {steps} steps")
        result = train(model, examples, steps=steps, batch_size=args.batch_size, lr=args.lr, seed=seed,
                       pad_id=tok.pad_token_id, log=lambda m, k=kind: _log(f"{k} {m}"),
                       max_seconds=60 * args.max_minutes if args.max_minutes else None,
                       probe=lambda step, k=kind, m=model: _log(f"{k} step {step} quick accuracy: {quick_eval(m, tok, eval_rows[::3])}"),
                       probe_every=args.probe_every, drills=drills, drill_steps=drill_steps)
        save_model(model, tok, args.out / kind)
        _log(f"{kind}: trained in {result['seconds']:.0f}s, final loss {result['final_loss']:.4f}, saved to {args.out / kind}")
        acc = quick_eval(model, tok, eval_rows) if args.eval_rows and not args.smoke else {}
        if acc:
            _log(f"{kind}: quick held-out accuracy (transformers, greedy): {acc}")
        summary[kind] = {"params": n_params, "seed": seed, "steps": steps, "drill_steps": drill_steps, "examples": len(examples), **result, "quick_eval": acc}
    summary["total_seconds"] = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    name = "build_summary.json" if not args.only else f"build_summary_{args.only}.json"
    (args.out / name).write_text(json.dumps(summary, indent=2) + "\n")
    _log(f"done in {summary['total_seconds']:.0f}s")


if __name__ == "__main__":
    main()
