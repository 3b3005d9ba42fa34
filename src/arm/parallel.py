"""Parallelism applied to plain models from the outside: activation checkpointing and FSDP2 per block.

The split follows torchtitan (``torchtitan/models/llama3/infra/parallelize.py``): model files hold architecture
only; this file decides how a model is checkpointed and sharded. LightningModules call ``parallelize`` from
``configure_model`` when Lightning's ``ModelParallelStrategy`` gives them a device mesh (see ``../shared/stack.md``:
FSDP2 is the sharding path that also runs on the CPU with gloo, so it is the one the test suite exercises).

Order, as in torchtitan:
1. Activation checkpointing wraps each block (``checkpoint_wrapper``, non-reentrant): the block's forward keeps
   only its inputs and recomputes the rest during backward.
2. ``fully_shard`` on each (wrapped) block: each block becomes one all-gather / reduce-scatter unit, so at most
   about one block's full parameters live at a time and the gather of block i+1 overlaps the compute of block i.
   Sharding the *wrapper* (not the inner block) matters: FSDP's hooks sit outside the checkpointed region, so the
   backward pass gathers a block's parameters once and the recomputation runs inside that gather instead of
   triggering a second one.
3. ``fully_shard`` on the root last: a ``fully_shard`` call takes every parameter below it that no sharded child
   already owns, so the root collects the leftovers (embeddings, heads, norms, small adapters) into one group.
   Sharding the root first would put every parameter in the root's group and leave nothing for the blocks.
   The root is not resharded after forward: backward needs its parameters right away, and methods other than
   ``forward`` (an LM head applied to the hidden states, say) can still read them after the forward call.

Rules a caller relies on:
- Frozen parameters (``requires_grad=False`` when ``parallelize`` runs) are not sharded: they are passed to
  ``fully_shard`` as ``ignored_params``, so every rank keeps a full replica, nothing is gathered for them and no
  gradient is reduced. Frozen towers kept *outside* ``model`` (the tokenizer's teacher and caption LM) are never
  touched; their owner moves them to the device.
- Scalar (0-dim) trainable parameters, such as a learnable temperature, cannot be sharded by FSDP2. They are
  replicated like frozen ones, and a hook averages their gradient over the mesh as soon as it is accumulated,
  so every rank takes the same optimiser step. (Gradient-norm clipping over a mix of sharded and replicated
  gradients is not supported by ``clip_grad_norm_``: models with scalar parameters train without it.)
- FSDP only hooks ``forward``. A root whose training code calls other methods (``SemanticTokenizer.quantize``)
  names them in ``forward_methods``; they then gather and reduce like ``forward``.
- ``parallelize`` is idempotent: a model that is already an ``FSDPModule`` is returned unchanged, because
  Lightning may call ``configure_model`` more than once (fit, then validate).

Simplifications: data parallel sharding only (no tensor or pipeline parallelism, no ``torch.compile`` step), one
mixed-precision policy for every unit, no CPU offload.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method


def _parents(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    """id(child) -> (parent, attribute name) for every submodule of ``model``."""
    return {id(child): (parent, name) for parent in model.modules() for name, child in parent.named_children()}


def apply_activation_checkpointing(model: nn.Module, blocks: Sequence[nn.Module]) -> list[nn.Module]:
    """Replace each block inside ``model`` by a non-reentrant ``checkpoint_wrapper`` of it; return the wrappers.

    The wrapper strips its own prefix from ``state_dict`` keys, so checkpoints and exports do not change.
    """
    parents = _parents(model)
    wrapped = []
    for block in blocks:
        if id(block) not in parents:
            raise ValueError(f"a block of type {type(block).__name__} is not a submodule of the model: pass the "
                             f"model's own blocks (e.g. model.body.blocks)")
        parent, name = parents[id(block)]
        wrapper = checkpoint_wrapper(block)
        parent.register_module(name, wrapper)
        wrapped.append(wrapper)
    return wrapped


def parallelize(
    model: nn.Module,
    mesh: DeviceMesh,
    blocks: Iterable[nn.Module],
    activation_checkpointing: bool = False,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = torch.float32,
    forward_methods: Sequence[str] = (),
) -> nn.Module:
    """Apply activation checkpointing (optional), then FSDP2 per block, then to the root; return ``model``.

    Args:
        model: the trainable model (a plain ``nn.Module``); changed in place.
        mesh: 1-D data-parallel mesh, e.g. ``self.device_mesh["data_parallel"]`` in a LightningModule.
        blocks: the repeated blocks of ``model``, each one sharding unit (e.g. ``model.body.blocks``).
        activation_checkpointing: recompute each block's activations in backward instead of storing them.
        param_dtype: dtype parameters are gathered in for compute (``None``: keep their dtype; with Lightning's
            ``bf16-mixed`` autocast already runs matmuls in bf16, so ``None`` is the usual choice).
        reduce_dtype: dtype gradients are reduce-scattered in (fp32 so that averaging over ranks loses nothing).
        forward_methods: methods of ``model`` besides ``forward`` that training or validation calls on it.
    """
    if isinstance(model, FSDPModule):
        return model
    blocks = list(blocks)  # snapshot: checkpointing replaces the entries of the container we may be iterating
    if not blocks:
        raise ValueError("parallelize needs at least one block to shard (e.g. model.body.blocks)")
    if activation_checkpointing:
        blocks = apply_activation_checkpointing(model, blocks)
    frozen = {p for p in model.parameters() if not p.requires_grad}
    scalars = {p for p in model.parameters() if p.requires_grad and p.ndim == 0}
    replicated = frozen | scalars
    options = {"mesh": mesh, "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype),
               "ignored_params": replicated or None}
    for block in blocks:
        fully_shard(block, **options)
    fully_shard(model, reshard_after_forward=False, **options)
    for name in forward_methods:
        if not callable(getattr(model, name, None)):
            raise ValueError(f"{type(model).__name__} has no method {name!r} to register as an FSDP forward method")
        register_fsdp_forward_method(model, name)
    device = torch.device(mesh.device_type)  # "cuda" = the current device, which Lightning set per rank
    for p in replicated:  # fully_shard leaves ignored parameters where they are; compute needs them on the device
        p.data = p.data.to(device)
    group = mesh.get_group()
    for p in scalars:
        p.register_post_accumulate_grad_hook(lambda param: dist.all_reduce(param.grad, dist.ReduceOp.AVG, group))
    return model


def materialize_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give every trainable parameter its optimiser state now (zero moments, step 0) if it has none yet.

    Why: a distributed checkpoint is loaded into a fresh optimiser whose state is first created for *every*
    parameter, and ``torch.distributed.checkpoint`` then fails on any key the saved optimiser lacked. A parameter
    that never received a gradient (``PixelDiT.cond_type`` when the code grid equals the patch grid) had no state.
    How: one step with zero gradients at learning rate 0, then the step counters reset to 0. For Adam/AdamW
    (and SGD with momentum) that leaves parameters unchanged and creates exactly the state the optimiser would
    create lazily at a parameter's first gradient, so training is unchanged. A no-op for an optimiser with state.
    """
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    if optimizer.state or not params:
        return
    for p in params:
        p.grad = torch.zeros_like(p)
    lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"].zero_()


def is_sharded(params: Iterable[torch.Tensor]) -> bool:
    """True when any parameter is a DTensor (sharded by ``fully_shard``)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in params)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole, unsharded state dict of a (possibly FSDP2-sharded) model as plain CPU tensors.

    A collective under FSDP: every rank must call it; rank 0 gets the full dict, the other ranks an empty one.
    On an unsharded model it is ``model.state_dict()`` moved to the CPU.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not isinstance(model, FSDPModule):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
