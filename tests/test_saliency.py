"""Weight-gradient saliency: agreement with a direct autograd computation on every architecture, routed-expert
averaging, a planted dead layer, clean-up of gradient state, and the bootstrap summary."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from kmap.core.models import LoadedModel, load_model
from kmap.core.spec import ModelSpec
from kmap.core.stats import bootstrap_indices
from kmap.core.tokens import continuation
from kmap.methods.saliency import batched
from kmap.methods.saliency.measure import experts_of, gradient_sums, measured_parameters, run_saliency
from kmap.methods.saliency.settings import METRICS, SaliencyRun, SaliencySettings
from kmap.methods.saliency.summary import per_prompt, summarise

PROMPTS = pd.DataFrame(
    {
        "id": ["dose", "vignette", "short"],
        "text": [
            "the dose of metformin is",
            "a 45 year old male patient presents with chest pain and fever , most likely has",
            "a patient has",
        ],
        "target": ["500 mg twice daily", "angina", "fever"],
    }
)


def routed_experts(model: LoadedModel, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """Experts chosen for any token, recomputed from the router logits the model reports (top-k per token)."""
    with torch.no_grad():
        logits = model.model(input_ids=ids, output_router_logits=True).router_logits[layer]
    return torch.unique(torch.topk(logits, model.model.config.num_experts_per_tok, dim=-1).indices)


def direct_saliency(model: LoadedModel, text: str, target: str) -> np.ndarray:
    """[n_layers, 2] mean |grad| (attention, mlp) from torch.autograd.grad over every parameter at once."""
    prompt = model.tokenizer(text)["input_ids"]
    answer = continuation(model.tokenizer, text, target)
    ids = torch.tensor([prompt + answer])
    modules = [(m.layer, m.part, m) for m in measured_parameters(model)]
    params = [p for _, _, m in modules for p in (*m.dense, *m.experts)]
    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        try:
            logp = model.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
            loss = -logp[torch.arange(len(answer)), torch.tensor(answer)].mean()
            grads = dict(zip(map(id, params), torch.autograd.grad(loss, params, allow_unused=True), strict=True))
        finally:
            for p in params:
                p.requires_grad_(False)
    out = np.zeros((model.n_layers, 2))
    for layer, part, m in modules:
        total, count = 0.0, 0
        for p in m.dense:
            total += grads[id(p)].abs().sum().item() if grads[id(p)] is not None else 0.0
            count += p.numel()
        if m.experts:
            routed = routed_experts(model, ids, layer)
            for p in m.experts:
                grad = grads[id(p)]
                # Unrouted experts take no part in the forward: their gradient is exactly zero.
                unrouted = torch.ones(p.shape[0], dtype=torch.bool)
                unrouted[routed] = False
                assert not grad[unrouted].any()
                total += grad[routed].abs().sum().item()
                count += len(routed) * p[0].numel()
        out[layer, 0 if part == "attention" else 1] = total / count
    return out


def test_saliency_equals_direct_autograd(tiny: LoadedModel) -> None:
    run = run_saliency(tiny, PROMPTS, SaliencySettings())
    values = per_prompt(run)
    for row, (text, target) in enumerate(zip(PROMPTS["text"], PROMPTS["target"], strict=True)):
        expected = direct_saliency(tiny, text, target)
        np.testing.assert_allclose(values["saliency_attention"][row], expected[:, 0], rtol=1e-5)
        np.testing.assert_allclose(values["saliency_mlp"][row], expected[:, 1], rtol=1e-5)
    # Combined: the parameter-weighted mean of the two parts.
    weights = run.counts[0]
    combined = (values["saliency_attention"][0] * weights[:, 0] + values["saliency_mlp"][0] * weights[:, 1]) / (
        weights.sum(axis=1)
    )
    np.testing.assert_allclose(values["saliency_combined"][0], combined, rtol=1e-12)
    assert np.all(run.losses > 0)


def test_gradient_state_is_restored(tiny: LoadedModel) -> None:
    run_saliency(tiny, PROMPTS.head(1), SaliencySettings())
    assert not any(p.requires_grad for p in tiny.model.parameters())
    assert all(p.grad is None for p in tiny.model.parameters())
    for param in tiny.model.parameters():
        assert not param._post_accumulate_grad_hooks


@pytest.fixture(scope="module")
def moe(tiny_dirs) -> LoadedModel:
    """The mixture-of-experts architecture (GPT-OSS); the others have dense MLPs."""
    return load_model(ModelSpec(name="moe", kind="tiny", source=str(tiny_dirs["gpt_oss"]), dtype="float32"))


def test_dense_mlps_have_no_experts(tiny: LoadedModel) -> None:
    assert (experts_of(tiny.parts.mlp(0)) is not None) == (tiny.parts.mlp(0).__class__.__name__ == "GptOssMLP")


def test_only_routed_experts_count(moe: LoadedModel) -> None:
    experts = experts_of(moe.parts.mlp(0))
    assert experts is not None
    model = copy.deepcopy(moe)
    router = model.parts.mlp(0).router
    with torch.no_grad():  # plant the routing: experts 1 and 3 win for every token
        router.bias.copy_(torch.tensor([-100.0, 100.0, -100.0, 100.0]))
    run = run_saliency(model, PROMPTS.head(1), SaliencySettings())
    stacked = [p for p in experts.parameters() if p.shape[0] == experts.num_experts]
    dense = sum(p.numel() for p in model.parts.mlp(0).parameters()) - sum(p.numel() for p in stacked)
    assert run.counts[0, 0, 1] == dense + 2 * sum(p[0].numel() for p in stacked)
    assert run.counts[0, 1, 1] > run.counts[0, 0, 1]  # layer 1 routes freely: more experts take part
    expected = direct_saliency(model, PROMPTS["text"][0], PROMPTS["target"][0])
    np.testing.assert_allclose(per_prompt(run)["saliency_mlp"][0], expected[:, 1], rtol=1e-5)


def test_stacked_expert_gradients_are_full_size_as_the_plan_budgets(moe: LoadedModel) -> None:
    """Measured on the tiny GPT-OSS: with every token routed to 2 of 4 experts, the gradient autograd hands to
    each stacked expert tensor still has the whole stack's size (zeros outside the routed experts). This is the
    memory ``gpu_plan.expert_gradient_gib`` budgets for the gradient stage."""
    from kmap.core.gpu_plan import DTYPE_BYTES, expert_gradient_gib

    model = copy.deepcopy(moe)
    with torch.no_grad():
        model.parts.mlp(0).router.bias.copy_(torch.tensor([-100.0, 100.0, -100.0, 100.0]))
    experts = experts_of(model.parts.mlp(0))
    stacked = [p for p in experts.parameters() if p.shape[0] == experts.num_experts]
    seen: dict[int, tuple[int, list[int]]] = {}

    def record(param: torch.nn.Parameter) -> None:
        touched = [e for e in range(param.shape[0]) if param.grad[e].abs().sum() > 0]
        seen[id(param)] = (param.grad.numel(), touched)

    for param in stacked:
        param.requires_grad_(True)
    handles = [p.register_post_accumulate_grad_hook(record) for p in stacked]
    try:
        ids = model.tokenizer(PROMPTS["text"][0] + " " + PROMPTS["target"][0])["input_ids"]
        with torch.enable_grad():
            model.model(input_ids=torch.tensor([ids]), use_cache=False).logits.float().logsumexp(-1).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
        for param in stacked:
            param.requires_grad_(False)
            param.grad = None
    for param in stacked:
        numel, touched = seen[id(param)]
        assert numel == param.numel() and touched == [1, 3]  # full size, two experts non-zero
    layer_stack = sum(p.numel() for p in stacked)
    arch = {"num_hidden_layers": moe.n_layers}
    counts = {"mxfp4_experts": layer_stack * moe.n_layers}
    assert expert_gradient_gib(arch, counts, "float32") == 2 * layer_stack * DTYPE_BYTES["float32"] / 2**30


def test_dead_layer_has_lower_saliency_than_its_neighbours(tiny: LoadedModel) -> None:
    """Planted: layer 1's attention and MLP weights all zero, so the layer is the identity on the residual
    stream and no gradient reaches its weights; its neighbours' saliency stays positive."""
    model = copy.deepcopy(tiny)
    with torch.no_grad():
        for module in (model.parts.attention(1), model.parts.mlp(1)):
            for param in module.parameters():
                param.zero_()
    ids = model.tokenizer(PROMPTS["text"][1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        states = model.model(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(states[2], states[1], atol=0, rtol=0)  # zero effect, as planted
    run = run_saliency(model, PROMPTS, SaliencySettings())
    metrics, _ = summarise(run, "m", "d", n_boot=50)
    for metric in METRICS:
        curve = metrics[metrics["metric"] == metric].set_index("layer")
        assert curve.loc[1, "ci_high"] < curve.loc[0, "ci_low"], metric
        assert curve.loc[1, "ci_high"] < curve.loc[2, "ci_low"], metric


def test_weights_without_gradients_are_refused_and_state_restored(tiny: LoadedModel) -> None:
    model = copy.deepcopy(tiny)
    model.parts.attention(2).register_parameter("packed", nn.Parameter(torch.zeros(4, dtype=torch.int8), False))
    with pytest.raises(TypeError, match="dequantized"), gradient_sums(model, measured_parameters(model)):
        pass
    assert not any(p.requires_grad for p in model.model.parameters())


def test_summary_means_and_shared_bootstrap() -> None:
    values = np.array([[1.0, 4.0], [2.0, 4.0], [3.0, 4.0], [6.0, 4.0]])
    # Every parameter count 1: per-prompt saliency is the |grad| sum itself (MLP twice the attention's).
    run = SaliencyRun(["a", "b", "c", "d"], np.stack([values, 2 * values], axis=-1), np.ones((4, 2, 2)), np.zeros(4))
    metrics, replicates = summarise(run, "m", "d", n_boot=40, seed=1)
    table = metrics.set_index(["metric", "layer"])
    assert table.loc[("saliency_attention", 0), "value"] == 3.0
    assert table.loc[("saliency_mlp", 0), "value"] == 6.0
    assert table.loc[("saliency_attention", 1), ["value", "ci_low", "ci_high"]].tolist() == [4.0, 4.0, 4.0]
    assert (metrics["n"] == 4).all() and set(metrics["method"]) == {"saliency"}
    indices = bootstrap_indices(4, 40, 1)
    expected = np.array([1.0, 2.0, 3.0, 6.0])[indices].mean(axis=1)
    got = replicates[(replicates["metric"] == "saliency_mlp") & (replicates["layer"] == 0)].sort_values("replicate")
    np.testing.assert_allclose(got["value"], 2 * expected)


def test_overflow_is_reported_with_prompt_and_layers_never_averaged(tiny: LoadedModel) -> None:
    model = copy.deepcopy(tiny)
    with torch.no_grad():  # what float16 overflow produces: an infinite activation inside layer 1
        next(model.parts.mlp(1).parameters()).view(-1)[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"prompt 'dose': non-finite .* layers \[.*\].*bfloat16 or float32"):
        run_saliency(model, PROMPTS.head(2), SaliencySettings())
    # The failed run left no gradient state behind.
    assert not any(p.requires_grad for p in model.model.parameters())


@pytest.mark.parametrize("batch_size", [2, 8])
def test_batched_backward_equals_one_prompt_per_backward(tiny: LoadedModel, batch_size: int) -> None:
    """Each prompt's gradient formed from its own rows of a padded batch equals its own backward; GPT-OSS
    (attention sinks, stacked experts) is measured one prompt at a time whatever the batch size."""
    hooks = sum(len(m._forward_hooks) for m in tiny.model.modules())
    one = run_saliency(tiny, PROMPTS, SaliencySettings(batch_size=1))
    many = run_saliency(tiny, PROMPTS, SaliencySettings(batch_size=batch_size))
    assert (batched.owners(tiny) is None) == (tiny.model.config.model_type == "gpt_oss")
    assert many.ids == one.ids
    np.testing.assert_array_equal(many.counts, one.counts)
    np.testing.assert_allclose(many.losses, one.losses, rtol=1e-6)
    np.testing.assert_allclose(many.sums, one.sums, rtol=1e-5)
    assert (many.sums > 0).all()
    assert sum(len(m._forward_hooks) for m in tiny.model.modules()) == hooks  # ours removed
