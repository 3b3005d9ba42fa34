"""A key/value cache for incremental decoding, preallocated once and written in place.

Autoregressive sampling feeds one new token per step; without a cache every step recomputes keys and values of
the whole prefix (quadratic cost). ``KVCache`` holds, for every layer, key and value buffers of shape
(B, Hkv, max_len, Dh) and one key-validity mask (B, max_len) shared by the layers. A forward pass with a cache
(``Transformer.forward(x, mask, cache=cache)``) writes its keys/values at slots ``length .. length + T - 1`` and
attends over the filled slice ``[0, length + T)`` only; the caller never copies or grows the buffers, so a decode
loop allocates nothing of cache size per step (see the allocator notes in ``../shared/stack.md``).

Padding: rows of a batch may hold prompts of different lengths, **left**-padded so every row's last prompt token
sits in the same slot and the next token of every row goes to the same slot. Padded slots are invalid keys, and
each row keeps its own count of real tokens, which is the rotary position of its next token: a left-padded row
therefore sees exactly the positions and keys of the unpadded row (the same logits, tested).

A compiled decode step (``arm.nn.decode.decode_step``) reads ``filled()`` and returns the new token's keys and
values instead of writing them (a graph that writes into its input at a moving slot recompiles or copies the
cache); ``append_token`` then stores them and does the bookkeeping above.

Grouped-query attention reads the ``Hkv`` cached heads directly, never a repeated copy: SDPA's ``enable_gqa`` for
several new tokens (prefill), and for one new token (a decode step) two matmuls with the query heads of a group
stacked as rows, ``(B, Hkv, group, Dh) @ (B, Hkv, Dh, S)``, plus the cache's additive mask. Attention over the
cache runs in the cache's dtype, whatever the model's or autocast's: on the CPU keep the cache in float32.
Measured on the 2-core CPU at 32 rows x 150 filled slots, per layer: SDPA's CPU kernel ~2.3 ms in fp32 and
~4-5 ms in bf16; the two matmuls ~1.0 ms in fp32, while bf16 matmuls copy every strided cache slice into a
contiguous temporary each step (cache-sized allocations, which the allocator notes warn about) and were no faster.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of ``num_layers`` layers for ``batch`` rows and up to ``max_len`` positions.

    Attributes:
        keys, values: (num_layers, B, Hkv, max_len, Dh) buffers; ``keys[i]`` is layer ``i``'s.
        valid: (B, max_len) bool, True where a slot holds a real (non-padding) token.
        bias: (B, max_len) float32, 0 on valid slots and -inf elsewhere (the additive mask of decode steps).
        num_real: (B,) long, real tokens written so far per row = rotary position of the row's next token.
        length: slots filled so far (the same for every row).
    """

    def __init__(self, num_layers: int, batch: int, num_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        shape = (num_layers, batch, num_kv_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.bias = torch.full((batch, max_len), float("-inf"), device=device)
        self.num_real = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = 0

    @property
    def batch(self) -> int:
        return self.keys.shape[1]

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    def reset(self) -> None:
        """Forget every token (the buffers are reused, not freed)."""
        self.valid.zero_()
        self.bias.fill_(float("-inf"))
        self.num_real.zero_()
        self.length = 0

    def append_mask(self, real: torch.Tensor) -> torch.Tensor:
        """Record the validity of the next ``T`` slots from ``real`` (B, T) bool; return their rotary positions
        (B, T): each real token's index among its row's real tokens (a padded slot gets its row's next position,
        which no real token ever reads). Does not advance ``length`` (``advance`` does, after the layers ran)."""
        B, T = real.shape
        if B != self.batch:
            raise ValueError(f"the cache holds {self.batch} rows but the input has {B}")
        if self.length + T > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions; {self.length} are filled and {T} more "
                             "do not fit: allocate a longer cache")
        self.valid[:, self.length:self.length + T] = real
        self.bias[:, self.length:self.length + T].masked_fill_(real, 0.0)
        if T == 1:
            positions = self.num_real[:, None].clone()  # (B, 1)
        else:
            positions = self.num_real[:, None] + real.long().cumsum(1) - real.long()  # (B, T)
        self.num_real += real.sum(1)
        return positions

    def attention_mask(self, num_new: int) -> torch.Tensor:
        """Mask (B, 1, T, S) over the ``S = length + T`` filled slots for the ``T = num_new`` slots being written:
        a query sees valid keys up to its own slot, and always itself (so a padded query never has an empty row).
        For several new tokens a boolean mask; for one new token (a decode step) the additive float32 mask, a view
        of ``bias`` with no allocation (a padded decode token would see only the valid keys before it)."""
        end = self.length + num_new
        if num_new == 1:
            return self.bias[:, None, None, :end]  # (B, 1, 1, S)
        query_slot = torch.arange(self.length, end, device=self.valid.device)[:, None]  # (T, 1)
        key_slot = torch.arange(end, device=self.valid.device)[None]  # (1, S)
        visible = self.valid[:, None, None, :end] & (key_slot <= query_slot)  # (B, 1, T, S)
        return visible | (key_slot == query_slot)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``, ``v`` (B, Hkv, T, Dh) of ``layer`` at the next ``T`` slots; return views of the filled
        slices (B, Hkv, length + T, Dh)."""
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, num_new: int) -> None:
        self.length += num_new

    def filled(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views of the slots filled so far, the inputs of a compiled decode step (``arm.nn.decode``): keys and
        values (L, B, Hkv, length, Dh) and the additive mask (B, length). No copy."""
        return (self.keys[:, :, :, :self.length], self.values[:, :, :, :self.length],
                self.bias[:, :self.length])

    def append_token(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append one real token per row whose keys and values of every layer, (L, B, Hkv, Dh), a compiled decode
        step computed without writing them (it attends over ``filled()`` plus the token itself): the same
        bookkeeping as ``append_mask`` + ``write`` per layer + ``advance(1)``, in three copies."""
        self.append_mask(torch.ones(self.batch, 1, dtype=torch.bool, device=self.valid.device))
        self.keys[:, :, :, self.length] = keys
        self.values[:, :, :, self.length] = values
        self.advance(1)
