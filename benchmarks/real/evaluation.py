"""Scoring a chat model on the real task (benchmarks/real/task.py): greedy, sampled and pass@k accuracy.

Answers are generated from the model's chat template (its default system prompt included, as a user's run would
see it), left-padded in batches, stopping at the end-of-turn token, and judged by the task's checkers.
"""

import torch

from benchmarks.real.task import Row


def chat_prompts(tokenizer, rows: list[Row]) -> list[str]:
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": row.prompt.text}], tokenize=False, add_generation_prompt=True
        )
        for row in rows
    ]


@torch.no_grad()
def generate(
    model, tokenizer, rows: list[Row], samples: int, temperature: float, max_new_tokens: int, batch_size: int = 32
) -> list[list[str]]:
    """``samples`` answers per row (greedy when ``temperature`` is 0), as text without special tokens."""
    tokenizer.padding_side = "left"
    texts = chat_prompts(tokenizer, rows)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    stop = [t for t in {end_of_turn, tokenizer.eos_token_id} if isinstance(t, int) and t >= 0]
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature else {}
    model.eval()
    answers: list[list[str]] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        batch = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        output = generate_from_shared_prompts(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            samples,
            max_new_tokens=max_new_tokens,
            eos_token_id=stop,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
        decoded = tokenizer.batch_decode(output[:, batch["input_ids"].size(1) :], skip_special_tokens=True)
        answers += [decoded[i * samples : (i + 1) * samples] for i in range(len(decoded) // samples)]
    return answers


@torch.no_grad()
def generate_from_shared_prompts(model, input_ids, attention_mask, samples: int, **generation) -> torch.Tensor:
    """``samples`` generations per (left-padded) prompt, each prompt's prefill computed once.

    ``generate(num_return_sequences=k)`` runs the prompt through the model k times; the prompts are most of the
    tokens here (about 50 against answers of about 10). So the prompt but its last token is run once, its KV cache
    repeated k times, and ``generate`` continues from it: the same positions (from the attention mask, as
    ``generate`` computes them) and so the same distribution as plain generation (tested with greedy decoding).
    """
    if samples == 1 or input_ids.size(1) < 2:
        return model.generate(
            input_ids=input_ids, attention_mask=attention_mask, num_return_sequences=samples, **generation
        )
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    prefix = model(
        input_ids=input_ids[:, :-1],
        attention_mask=attention_mask[:, :-1],
        position_ids=positions[:, :-1],
        use_cache=True,
    ).cache  # transformers 5 names the KV cache `cache` (`past_key_values` is deprecated)
    prefix.batch_repeat_interleave(samples)
    return model.generate(
        input_ids=input_ids.repeat_interleave(samples, dim=0),
        attention_mask=attention_mask.repeat_interleave(samples, dim=0),
        cache=prefix,
        **generation,
    )


def accuracy(rows: list[Row], answers: list[list[str]]) -> float:
    """Prompt-level accuracy, averaged over each row's answers."""
    per_row = [sum(row.prompt.correct(a) for a in group) / len(group) for row, group in zip(rows, answers)]
    return sum(per_row) / len(per_row)


def scores(model, tokenizer, rows: list[Row], samples: int, temperature: float, max_new_tokens: int) -> dict:
    """Greedy accuracy and partial credit, and the accuracy of ``samples`` samples per prompt at ``temperature``."""
    greedy = generate(model, tokenizer, rows, 1, 0.0, max_new_tokens)
    sampled = generate(model, tokenizer, rows, samples, temperature, max_new_tokens)
    return {
        "greedy_accuracy": accuracy(rows, greedy),
        "greedy_partial_credit": sum(r.prompt.partial_credit(g[0]) for r, g in zip(rows, greedy)) / len(rows),
        "sampled_accuracy": accuracy(rows, sampled),
        "greedy_examples": [[r.prompt.text, g[0]] for r, g in list(zip(rows, greedy))[:4]],
    }


def headroom(model, tokenizer, rows: list[Row], k: int, temperature: float, max_new_tokens: int) -> dict:
    """Greedy accuracy, one sample, pass@k, and the share of prompts some but not all of k samples solve."""
    greedy = generate(model, tokenizer, rows, 1, 0.0, max_new_tokens)
    sampled = generate(model, tokenizer, rows, k, temperature, max_new_tokens)
    solved = [sum(row.prompt.correct(a) for a in group) for row, group in zip(rows, sampled)]
    return {
        "greedy": accuracy(rows, greedy),
        "sample": accuracy(rows, sampled),
        "pass_at_k": sum(s > 0 for s in solved) / len(rows),
        "mixed": sum(0 < s < k for s in solved) / len(rows),
        "k": k,
    }
