"""Next-token log-probabilities and loss from a causal language model's logits: the one place attnscope computes them.

log p(token t+1 | tokens <= t) = log_softmax(logits_t)[id_{t+1}], taken a block of rows at a time so that no second
(T, vocabulary) matrix is held next to the logits (SmolLM2: 49152 columns). Each row's value does not depend on the
block size. fp32 gives the model's own numbers (what a capture records); the loss is taken in fp64. Non-finite logits
(a replacement attention that divided by zero) give non-finite log-probabilities; they are returned as they are.
"""

from __future__ import annotations

import torch

from attnscope.kernels import compiled

ROWS = 256  # rows of the (T, vocabulary) logits turned into log-probabilities at a time
# Calls over at least this many logits take the compiled row function (kernels.compiled) when the policy allows:
# SmolLM2 (49,152 columns) from about 1,400 tokens on. Compiled: 0.30 s instead of 0.52 s at 8,192 tokens on two
# cores (the values agree to the last bit or within a few ulps). Built once per machine (kernels.compiled).
COMPILE_FROM = 2**26


def picked_logprobs(logits: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """log_softmax(logits)[row, target] for (rows, V) logits and (rows,) targets, in `dtype`. Compiled, Inductor
    reads each row once and never writes the (rows, V) log-softmax, as only the targets' entries are used."""
    return torch.log_softmax(logits.to(dtype), -1).gather(-1, targets[:, None]).squeeze(-1)


_compiled_picked_logprobs = compiled.fused(picked_logprobs, dims={"logits": "R V", "targets": "R"})


def next_token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, *,
                        dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """log p(token t+1 | tokens <= t) for the first sequence of a batch.

    Args:
        logits: (B, T, V) the model's output logits.
        input_ids: (B, T) the ids the model read.
        dtype: precision of the log-softmax (and of the result).

    Returns:
        (T - 1,) in `dtype`, on the CPU (computed where the logits are).
    """
    if logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match input ids {tuple(input_ids.shape)}: expected "
                         "(B, T, V) and (B, T).")
    targets = input_ids[0, 1:].to(logits.device)
    out = torch.empty(len(targets), dtype=dtype, device=logits.device)
    work = logits.shape[1] * logits.shape[2]
    picked = (_compiled_picked_logprobs if compiled.wanted(logits.device, work, least=COMPILE_FROM)
              else picked_logprobs)
    for start in range(0, len(targets), ROWS):
        rows = slice(start, min(start + ROWS, len(targets)))
        out[rows] = picked(logits[0, rows].contiguous(), targets[rows].contiguous(), dtype)
    return out.cpu()


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> float:
    """Mean next-token loss in nats over the first sequence: -mean of the fp64 next_token_logprobs.

    Raises:
        ValueError: with fewer than two tokens, which have no next token to predict.
    """
    if input_ids.shape[1] < 2:
        raise ValueError("Next-token loss needs at least two tokens.")
    return -float(next_token_logprobs(logits, input_ids).sum()) / (input_ids.shape[1] - 1)
