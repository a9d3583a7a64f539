"""CPU training's dropout (train/dropout.py): torch's semantics with numpy's masks."""
import numpy as np
import pytest
import torch

from tests.conftest import tiny_bert
from tsinfer.train.dropout import FastDropout, use_fast_dropout


def test_masks_are_bernoulli_and_scaled():
    drop = FastDropout(0.1, np.random.default_rng(0)).train()
    x = torch.ones(200_000)
    y = drop(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.1) < 0.003
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.9))
    assert abs(y.mean().item() - 1.0) < 0.005  # the expectation of each element is kept


def test_eval_mode_and_zero_p_are_the_identity():
    x = torch.randn(4, 7)
    assert FastDropout(0.5, np.random.default_rng(0)).eval()(x) is x
    assert FastDropout(0.0, np.random.default_rng(0)).train()(x) is x


def test_p_one_drops_everything_as_torch_does():
    x = torch.randn(5, 3)
    assert torch.equal(FastDropout(1.0, np.random.default_rng(0)).train()(x), torch.nn.functional.dropout(x, 1.0))


def test_gradient_flows_through_the_kept_elements_only():
    drop = FastDropout(0.3, np.random.default_rng(1)).train()
    x = torch.ones(1000, requires_grad=True)
    y = drop(x)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(x * mask * scale)/dx at x = 1 is the scaled mask itself


def test_the_same_seed_gives_the_same_masks_and_bf16_stays_bf16():
    x = torch.ones(64, 32, dtype=torch.bfloat16)
    a = FastDropout(0.1, np.random.default_rng(7)).train()(x)
    b = FastDropout(0.1, np.random.default_rng(7)).train()(x)
    c = FastDropout(0.1, np.random.default_rng(8)).train()(x)
    assert a.dtype == torch.bfloat16 and torch.equal(a, b) and not torch.equal(a, c)


def test_every_dropout_of_a_model_is_replaced_and_its_outputs_kept():
    model, _ = tiny_bert()
    model.eval()
    ids = torch.randint(5, 1000, (3, 9))
    before = model(input_ids=ids).logits
    n = sum(type(m) is torch.nn.Dropout for m in model.modules())
    assert use_fast_dropout(model, seed=0) == n > 0
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert torch.equal(model(input_ids=ids).logits, before)  # eval: the same function
    model.train()
    assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)  # training: masks drawn


@pytest.mark.parametrize("p", [0.05, 0.25])
def test_p_is_kept_to_the_draws_resolution(p):
    drop = FastDropout(p, np.random.default_rng(3))
    assert abs(drop.threshold / 65536 - p) <= 0.5 / 65536
