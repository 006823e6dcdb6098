"""The prompt layout: what each role is prompted with, as token ids, and how completions are laid out for scoring.

`PromptLayout` renders the policy's prompts with the chat template, builds the improver's prompts in both formats
(the single-turn template, or the next turn of the policy's own conversation, from token ids so that the draft's
prefix stays exactly what was sampled), and pads completions (content, then the end-of-turn token a finished
completion is scored with) for the forward passes, once per side (`Padded`).
"""

import torch
from transformers import PreTrainedTokenizerBase
from trl.data_utils import maybe_apply_chat_template

from ..method.improver import ImproverTemplate, next_turn_suffix, render_improver_prompt, uses_reference
from ..records import Completion, DraftBatch, ImproverPrompts, Padded


class PromptLayout:
    """Prompts and padded completions for a step's stages.

    Args:
        tokenizer: the trainer's tokenizer (its chat template renders both roles' prompts).
        improver_format: ``"template"`` or ``"next_turn"`` (resolved, not ``"auto"``).
        improver_template: the template of the ``"template"`` format.
        improver_instruction: the user turn of the ``"next_turn"`` format.
        end_of_turn: the token a finished completion is scored with (`method.improver.end_of_turn_token`: the chat
            template's, for conversational data).
        pad_token_id: the padding id of the rows.
        device: where the tensors go.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        improver_format: str,
        improver_template: ImproverTemplate,
        improver_instruction: str,
        end_of_turn: int,
        pad_token_id: int,
        device: torch.device,
    ):
        self.tokenizer = tokenizer
        self.improver_format = improver_format
        self.improver_template = improver_template
        self.improver_instruction = improver_instruction
        self.end_of_turn = end_of_turn
        self.pad_token_id = pad_token_id
        self.device = device

    def tokenize_prompts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(
            text=texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        )
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    def policy_prompt_texts(self, prompts: list) -> list[str]:
        return [maybe_apply_chat_template({"prompt": prompt}, self.tokenizer)["prompt"] for prompt in prompts]

    def reference_completion(self, text: str) -> Completion:
        ids = self.tokenizer(text=text, add_special_tokens=False)["input_ids"]
        return Completion(list(ids), ended=True)

    def completion_tokens(self, completion: Completion) -> list[int]:
        """The tokens a completion is scored on: its content, then the end-of-turn token if it ended."""
        return completion.scored_tokens(self.end_of_turn)

    def pad(self, completions: list[Completion]) -> Padded:
        """The completions as scored (`completion_tokens`), and right-padded as ids and mask."""
        tokens = [self.completion_tokens(completion) for completion in completions]
        width = max(1, *map(len, tokens))
        ids = torch.full((len(tokens), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(tokens), width), dtype=torch.long)
        for row, row_tokens in enumerate(tokens):
            ids[row, : len(row_tokens)] = torch.tensor(row_tokens, dtype=torch.long)
            mask[row, : len(row_tokens)] = 1
        return Padded(tokens, ids.to(self.device), mask.to(self.device))

    def improver_prompts(self, batch: DraftBatch) -> ImproverPrompts:
        """The improver prompts for each (prompt, draft), showing the reference where the template asks, tokenized."""
        if self.improver_format == "next_turn":
            return self.next_turn_prompts(batch)
        draft_texts = self.tokenizer.batch_decode([d.token_ids for d in batch.drafts], skip_special_tokens=True)
        show_reference = uses_reference(self.improver_template)
        texts = [
            render_improver_prompt(
                self.improver_template,
                prompt,
                draft,
                self.tokenizer,
                reference=reference if show_reference else None,
            )
            for prompt, draft, reference in zip(batch.prompts, draft_texts, batch.reference_texts)
        ]
        return ImproverPrompts(*self.tokenize_prompts(texts))

    def next_turn_prompts(self, batch: DraftBatch) -> ImproverPrompts:
        """The improver's prompt as the next turn of each row's conversation, built from token ids.

        Row ``i`` is the policy's prompt tokens, the draft's tokens (with the EOS it sampled), then the tokens of the
        new turn (`next_turn_suffix`: end of turn, instruction, assistant header). The draft is taken as sampled, not
        re-tokenized from its text, so the prefix is exactly what the policy generated: its cache and log-probabilities
        stay valid. Each row is exactly the tokenization of the chat template's rendering: the suffix opens with the
        end-of-turn token, which an ended draft's scored tokens already hold (`Completion.scored_tokens`); a draft cut
        at the length limit gets it from the suffix. Each row's rendering is checked to continue its policy prompt.

        Two layouts: ``ids``/``mask`` (left-padded rows, for the forward passes and generation without a cache) and,
        when the drafts' cache was kept, ``generation_ids``/``generation_mask``: the policy's padded prompt block and
        the generated block exactly as the cache holds them (padding after an EOS masked), then the new turns,
        left-padded. Positions come from the mask in `generate`, so both layouts give the same rewrite. Not when a
        draft ended on another EOS id than the end-of-turn token (Qwen's ``<|endoftext|>``, Llama 3's
        ``<|eom_id|>``): the cache holds that token where the conversation has the end of turn, so the rewrite is
        generated from the rows instead.
        """
        show_reference = uses_reference(self.improver_instruction)
        suffix_texts = [
            next_turn_suffix(
                self.improver_instruction,
                prompt,
                self.tokenizer,
                reference=reference if show_reference else None,
                policy_prompt=policy_text,  # each row: the template must continue what the policy saw
            )
            for prompt, reference, policy_text in zip(batch.prompts, batch.reference_texts, batch.prompt_texts)
        ]
        suffixes = self.tokenizer(text=suffix_texts, add_special_tokens=False)["input_ids"]
        end_of_turn = self.end_of_turn
        rows, rejected_lengths, afters = [], [], []
        for prompt_row, mask_row, draft, suffix in zip(
            batch.prompt_ids.tolist(), batch.prompt_mask.tolist(), batch.drafts, suffixes
        ):
            prompt = [token for token, real in zip(prompt_row, mask_row) if real]
            rejected = draft.scored_tokens(end_of_turn)
            closes = bool(suffix) and suffix[0] == end_of_turn  # the template ends the draft's turn
            after = suffix[1:] if closes and draft.ended else suffix
            rows.append(prompt + rejected + after)
            rejected_lengths.append(len(rejected))
            afters.append(after)
        ids, mask = self.left_pad(rows)
        prompts = ImproverPrompts(ids, mask, rejected_lengths, [len(after) for after in afters])
        cache = batch.draft_cache
        if cache is not None and not any(draft.ended_off_turn(end_of_turn) for draft in batch.drafts):
            after_ids, after_mask = self.left_pad(afters)
            prompts.generation_ids = torch.cat((batch.prompt_ids, cache.generated_ids, after_ids), dim=1)
            prompts.generation_mask = torch.cat((batch.prompt_mask, cache.generated_mask, after_mask), dim=1)
        return prompts

    def left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and mask of token-id rows (at least one column)."""
        width = max(1, *(len(row) for row in rows))
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            if row:
                ids[index, width - len(row) :] = torch.tensor(row, dtype=torch.long)
                mask[index, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)
