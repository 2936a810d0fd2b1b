"""Layer interventions agree with transformers' own hidden states on every architecture."""

from __future__ import annotations

import pytest
import torch

from kmap.core.hooks import capture, gather_rows, identity, last_token_index, overwrite
from kmap.core.models import LoadedModel, encode
from kmap.core.tables import EMBEDDINGS

TEXTS = ["a 45 year old male patient presents with chest pain", "fever and cough most likely has"]


def _batch(tiny: LoadedModel) -> dict[str, torch.Tensor]:
    batch = encode(tiny.tokenizer, TEXTS)
    batch.pop("offset_mapping")
    return batch


def _full(hidden: torch.Tensor) -> torch.Tensor:
    return hidden.clone()


def test_capture_equals_output_hidden_states(tiny: LoadedModel) -> None:
    batch = _batch(tiny)
    with torch.no_grad(), capture(tiny.parts.layers, _full) as got:
        out = tiny.model(**batch, output_hidden_states=True, use_cache=False)
    reference = out.hidden_states
    assert len(got) == tiny.n_layers + 1
    torch.testing.assert_close(got[EMBEDDINGS], reference[0], rtol=0, atol=1e-6)
    for layer in range(tiny.n_layers - 1):
        torch.testing.assert_close(got[layer], reference[layer + 1], rtol=0, atol=1e-6)
    # transformers applies the final norm to its last hidden state; the residual stream itself is pre-norm.
    torch.testing.assert_close(tiny.parts.norm(got[tiny.n_layers - 1]), reference[-1], rtol=1e-5, atol=1e-5)


def test_capture_at_last_token_matches_unbatched(tiny: LoadedModel) -> None:
    batch = _batch(tiny)
    index = last_token_index(batch["attention_mask"])
    with torch.no_grad(), capture(tiny.parts.layers, lambda h: gather_rows(h, index)) as got:
        tiny.parts.base(**batch, use_cache=False)
    batched = {k: v.clone() for k, v in got.items()}
    for row, text in enumerate(TEXTS):
        single = encode(tiny.tokenizer, [text])
        single.pop("offset_mapping")
        with torch.no_grad(), capture(tiny.parts.layers, lambda h: h[:, -1]) as alone:
            tiny.parts.base(**single, use_cache=False)
        for layer, value in alone.items():
            torch.testing.assert_close(batched[layer][row], value[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_identity_passes_input_through(tiny: LoadedModel, layer: int) -> None:
    batch = _batch(tiny)
    with torch.no_grad(), identity(tiny.parts.layers, [layer]), capture(tiny.parts.layers, _full) as got:
        tiny.parts.base(**batch, use_cache=False)
    before = got[layer - 1]  # input of layer l (embeddings for l = 0)
    torch.testing.assert_close(got[layer], before, rtol=0, atol=0)
    # Removing hooks restores the model: the ablated layer changes the residual again.
    with torch.no_grad(), capture(tiny.parts.layers, _full) as intact:
        tiny.parts.base(**batch, use_cache=False)
    assert not torch.allclose(intact[layer], intact[layer - 1])


def test_identity_of_nothing_changes_nothing(tiny: LoadedModel) -> None:
    batch = _batch(tiny)
    with torch.no_grad():
        plain = tiny.model(**batch, use_cache=False).logits
        with identity(tiny.parts.layers, []):
            same = tiny.model(**batch, use_cache=False).logits
    torch.testing.assert_close(plain, same, rtol=0, atol=0)


def test_overwrite_with_own_values_changes_nothing(tiny: LoadedModel) -> None:
    batch = _batch(tiny)
    with torch.no_grad(), capture(tiny.parts.layers, _full) as got:
        plain = tiny.model(**batch, use_cache=False).logits
    mask = torch.ones_like(batch["attention_mask"], dtype=torch.bool)
    for layer in (EMBEDDINGS, 0, tiny.n_layers - 1):
        with torch.no_grad(), overwrite(tiny.parts.layers, {layer: (mask, got[layer].clone())}):
            patched = tiny.model(**batch, use_cache=False).logits
        torch.testing.assert_close(patched, plain, rtol=0, atol=1e-6)


def test_overwrite_changes_only_masked_positions(tiny: LoadedModel) -> None:
    batch = _batch(tiny)
    with torch.no_grad(), capture(tiny.parts.layers, _full) as got:
        tiny.parts.base(**batch, use_cache=False)
    intact = {k: v.clone() for k, v in got.items()}
    mask = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    mask[:, 2] = True
    noise = torch.randn_like(intact[0]) * 10
    with (
        torch.no_grad(),
        overwrite(tiny.parts.layers, {0: (mask, noise)}),
        capture(tiny.parts.layers, _full) as got,
    ):
        tiny.parts.base(**batch, use_cache=False)
    torch.testing.assert_close(got[0][:, 2], noise[:, 2])
    # Causal attention: positions before the patch are untouched downstream; positions after it change.
    torch.testing.assert_close(got[1][:, :2], intact[1][:, :2], rtol=0, atol=1e-6)
    assert not torch.allclose(got[1][:, 3:], intact[1][:, 3:])
