"""``log_softmax(logits)`` read at chosen (position, token) pairs, without a positions x vocabulary log-softmax.

The scorer's selective logits (`scoring.Scorer.token_logps`) gather each scored token's log-probability here; with
a real vocabulary the full log-softmax and its gradient buffers are most of a step's memory.
"""

import torch


def gathered_log_softmax(logits: torch.Tensor, source: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits[source[q]])[tokens[q]]`` for every ``q``, from 2D ``logits`` (positions x vocabulary).

    What TRL's `selective_log_softmax` computes (the picked logit minus its row's logsumexp), as one autograd
    function: the logsumexp is computed once per row (a row may be picked several times), in chunks, and the
    backward writes the logits' gradient in one buffer (``g * (onehot - softmax)``) instead of a zero-filled buffer
    per term plus their sum. Positions x vocabulary temporaries are the costly part of a step with a real vocabulary.
    Half-precision logits are normalised in float32.
    """
    return _GatheredLogSoftmax.apply(logits, source, tokens)


def _row_chunks(logits: torch.Tensor) -> list[slice]:
    """Row ranges of about 64K logits each: temporaries small enough for the allocator to reuse from chunk to chunk
    (a fresh large buffer costs a page fault per page, each time)."""
    rows = max(1, 2**16 // max(1, logits.size(-1)))
    return [slice(start, start + rows) for start in range(0, logits.size(0), rows)]


class _GatheredLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, source: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        normalisers = torch.empty(logits.size(0), dtype=dtype, device=logits.device)
        for rows in _row_chunks(logits):
            torch.logsumexp(logits[rows].to(normalisers.dtype), dim=-1, out=normalisers[rows])
        ctx.save_for_backward(logits, normalisers, source, tokens)
        return (logits[source, tokens].to(normalisers.dtype) - normalisers[source]).to(logits.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        logits, normalisers, source, tokens = ctx.saved_tensors
        grad = grad.to(normalisers.dtype)
        # d/d logits[i, v] of sum_q grad[q] * (logits[s_q, t_q] - logsumexp(logits[s_q])):
        # [v == t_q] * grad[q] summed over q with s_q = i, minus softmax(logits[i])[v] * (sum of grad[q] with s_q = i).
        row_grad = torch.zeros_like(normalisers).index_add_(0, source, grad)
        logits_grad = torch.empty_like(logits)
        for rows in _row_chunks(logits):
            softmax = (logits[rows].to(normalisers.dtype) - normalisers[rows, None]).exp_()
            logits_grad[rows] = softmax.mul_(-row_grad[rows, None])
        logits_grad.index_put_((source, tokens), grad.to(logits.dtype), accumulate=True)
        return logits_grad, None, None
