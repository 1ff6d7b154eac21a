"""Parameter counts read from a checkpoint's safetensors (the figures routes.yaml carries).

    python -m testbed.params testbed/models/dense testbed/models/moe

total_params: every stored tensor, embeddings and LM head included.
active_params: what one token passes through: total minus the experts a token does not use,
i.e. total - (num_experts - experts_per_token) * (parameters of one expert) in every MoE layer.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from math import prod
from pathlib import Path

from safetensors import safe_open


@dataclass
class ParamCount:
    architecture: str
    total_params: int
    active_params: int
    num_experts: int | None = None
    active_experts: int | None = None


def count(model_dir: str | Path) -> ParamCount:
    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    experts = cfg.get("num_local_experts")
    top_k = cfg.get("num_experts_per_tok")
    total = expert_total = 0
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for name in f.keys():
                n = prod(f.get_slice(name).get_shape())
                total += n
                # Per-expert tensors (experts.3.w1) or fused ones (experts.gate_up_proj, leading dim = experts).
                if ".experts." in name:
                    expert_total += n
    if not experts:
        return ParamCount("dense", total, total)
    active = total - expert_total + expert_total * top_k // experts
    return ParamCount("moe", total, active, experts, top_k)


def main(argv: list[str] | None = None) -> None:
    dirs = (argv if argv is not None else sys.argv[1:]) or ["testbed/models/dense", "testbed/models/moe"]
    for d in dirs:
        print(json.dumps({"model": d, **{k: v for k, v in asdict(count(d)).items() if v is not None}}))


if __name__ == "__main__":
    main()
