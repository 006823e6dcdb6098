"""A step's stages, in the order a step runs them, each built from explicit dependencies (never the trainer):

`drafts` (the policy's samples for the prompts) -> `layout` (the improver's prompts; completions as token ids) ->
`sampling` (transformers or vLLM, `speculation`, `vllm_engine`) -> `pair_sources` (the chosen side: ``sgpo``,
``spin``, ``edit``) -> `scoring` (per-token log-probabilities: packed rows, selective logits) -> `losses` (the DPO
and improver objectives on those scores). `trl_sgpo.trainer` wires them; `trl_sgpo.records` holds what flows
between them.
"""
