"""``arm.parallel`` pieces that run in one process: activation checkpointing and eager optimiser state.

The sharding itself needs several processes: ``tests/integration/test_fsdp_*.py``.
"""

import copy

import pytest
import torch
from torch import nn

from arm.nn import Transformer, TransformerConfig
from arm.parallel import apply_activation_checkpointing, is_sharded, materialize_optimizer_state


def _tiny_transformer() -> Transformer:
    return Transformer(TransformerConfig(dim=16, num_layers=2, num_heads=2, mlp_hidden=32))


def test_activation_checkpointing_keeps_keys_outputs_and_gradients():
    torch.manual_seed(0)
    plain = _tiny_transformer()
    wrapped = copy.deepcopy(plain)
    apply_activation_checkpointing(wrapped, list(wrapped.blocks))
    assert all(type(b).__name__ == "CheckpointWrapper" for b in wrapped.blocks)
    assert list(wrapped.state_dict()) == list(plain.state_dict())  # checkpoints and exports are unchanged
    x = torch.randn(3, 5, 16)
    out_plain, out_wrapped = plain(x), wrapped(x)
    torch.testing.assert_close(out_wrapped, out_plain, rtol=0, atol=0)  # recomputation is the same arithmetic
    out_plain.square().sum().backward()
    out_wrapped.square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), wrapped.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-7, msg=name)


def test_activation_checkpointing_refuses_a_foreign_block():
    with pytest.raises(ValueError, match="not a submodule"):
        apply_activation_checkpointing(_tiny_transformer(), [nn.Linear(2, 2)])


def test_materialized_adamw_state_trains_identically():
    """Eager zero state (step 0) must give the same trajectory as torch's lazy state, including for a
    parameter that gets no gradient at first and one later, and must create state for every parameter."""
    torch.manual_seed(1)
    lazy_params = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(3))]
    eager_params = [nn.Parameter(p.detach().clone()) for p in lazy_params]
    lazy = torch.optim.AdamW(lazy_params, lr=0.1, weight_decay=0.1)
    eager = torch.optim.AdamW(eager_params, lr=0.1, weight_decay=0.1)
    materialize_optimizer_state(eager)
    assert len(eager.state) == 2 and all(float(s["step"]) == 0 for s in eager.state.values())
    torch.testing.assert_close(eager_params[0], lazy_params[0], rtol=0, atol=0)  # lr 0: nothing moved
    for step in range(4):
        grads = [torch.randn(4, 3), torch.randn(3) if step >= 2 else None]  # the bias joins at step 2
        for params, opt in ((lazy_params, lazy), (eager_params, eager)):
            for p, g in zip(params, grads):
                p.grad = None if g is None else g.clone()
            opt.step()
    for p, q in zip(lazy_params, eager_params):
        torch.testing.assert_close(q, p, rtol=0, atol=0)
    assert not is_sharded(eager_params)
