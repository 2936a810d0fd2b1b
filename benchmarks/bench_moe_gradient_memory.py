"""Peak host memory of one saliency backward on a one-layer GPT-OSS (CPU), against the GPU plan's budget.

Each measurement runs in a fresh process: the growth of the peak resident set during the prompt's forward and
backward, with kmap's gradient hooks (each gradient freed as soon as it is summed). With every token routed to
2 of the experts, a gradient proportional to the routed experts would be 2/E of the stack; autograd instead
materialises the whole stack (``kmap.core.gpu_plan.expert_gradient_gib`` budgets twice one layer's stack).

    python benchmarks/bench_moe_gradient_memory.py --experts 8 32 128
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys
sys.path.append({scripts!r})
import torch, transformers as tf
from kmap.core.architectures import parts
from kmap.core.models import LoadedModel
from kmap.core.spec import ModelSpec
from kmap.methods.saliency.measure import gradient_sums, measured_parameters
torch.manual_seed(0)
config = tf.GptOssConfig(vocab_size=64, hidden_size={hidden}, intermediate_size={hidden}, num_hidden_layers=1,
    num_attention_heads=4, num_key_value_heads=2, head_dim={hidden} // 4, num_local_experts={experts},
    num_experts_per_tok=2, sliding_window=8, max_position_embeddings=64)
model = tf.AutoModelForCausalLM.from_config(config).float().eval().requires_grad_(False)
loaded = LoadedModel(ModelSpec(name="m", kind="tiny", source="-"), model, None, parts(model), 0.0)
with torch.no_grad():  # every token to experts 0 and 1
    bias = torch.full(({experts},), -100.0); bias[:2] = 100.0
    loaded.parts.mlp(0).router.bias.copy_(bias)
ids = torch.randint(0, 64, (1, 16))
measured = measured_parameters(loaded)
stack = sum(p.numel() * p.element_size() for m in measured for p in m.experts)
with gradient_sums(loaded, measured):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.enable_grad():
        model(input_ids=ids, use_cache=False).logits.float().logsumexp(-1).sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"stack_mib": stack / 2**20, "peak_growth_mib": (peak - before) / 1024}}))
"""


def measure(experts: int, hidden: int) -> dict[str, float]:
    code = CHILD.format(scripts=str(REPO / "workflow_scripts"), hidden=hidden, experts=experts)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    print("| experts | one layer's stack (gate_up + down) | peak growth in backward | growth / stack | routed share |")
    print("|---|---|---|---|---|")
    for experts in args.experts:
        found = measure(experts, args.hidden)
        ratio = found["peak_growth_mib"] / found["stack_mib"]
        print(
            f"| {experts} | {found['stack_mib']:.1f} MiB | {found['peak_growth_mib']:.1f} MiB | {ratio:.2f} "
            f"| {2 / experts:.3f} |"
        )


if __name__ == "__main__":
    main()
