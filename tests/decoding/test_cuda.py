"""The decoder on CUDA (skipped without a GPU; experiments/recipes/gpu_check.sh runs it on one): in float32 and
bfloat16 every lossless built-in's greedy output equals ``target.generate`` up to numerical near-ties, every committed
verified/target token is the float32 argmax within the dtype's tolerance (self-consistency), and the lean engine
agrees with transformers' modules within the dtype's rounding."""

import pytest
import torch

from specpolicy import generate, load_model
from specpolicy.decoding.engine import TransformersForward, causal_forward
from specpolicy.decoding.precision import classify_divergence, self_consistency

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

PROMPTS = ["import os\nimport sys\n\n\ndef main(", "class Parser:\n    def __init__(self, text):\n        self.",
           "    for key, value in sorted(items):\n        if "]
LOSSLESS = [("ar", {}), ("fixed", {"k": 3}), ("threshold", {}), ("entropy", {}), ("heuristic", {})]


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def model(request):
    return load_model("tiny", device="cuda", dtype=request.param)


@torch.inference_mode()
def test_lossless_policies_match_generate_up_to_near_ties(model):
    for text in PROMPTS:
        ids = model.tokenizer.encode(text, add_special_tokens=False)
        ref = model.target.generate(torch.tensor([ids], device="cuda"), do_sample=False, max_new_tokens=48,
                                    min_new_tokens=48)[0, len(ids):].tolist()
        for name, params in LOSSLESS:
            res = generate(model, ids, name, max_new_tokens=48, **params)
            d = classify_divergence(model, ids, res.token_ids, ref)
            assert d.kind in ("exact", "near_tie"), (model.dtype, name, d)
            assert not self_consistency(model, res).mismatches, (model.dtype, name)


@torch.inference_mode()
def test_lean_engine_agrees_with_transformers_on_cuda(model):
    ids = torch.randint(0, 4096, (1, 80), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    lean, hf = causal_forward(model.target, "lean"), TransformersForward(model.target)
    tol = 1e-5 if model.dtype == torch.float32 else 2e-2  # relative error of the hidden states

    def rel(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm())

    assert rel(lean.forward(ids[:, :40]), hf.forward(ids[:, :40])) <= tol
    p = 40
    for m in (1, 3, 1, 5, 2):
        assert rel(lean.forward(ids[:, p : p + m]), hf.forward(ids[:, p : p + m])) <= tol, (model.dtype, m)
        p += m
