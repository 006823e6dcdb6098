"""Reading a training row: the text of its SFT reference, whatever its format."""

from typing import Any


def reference_text(completion: str | list[dict[str, Any]]) -> str:
    """The text of an SFT reference: the string itself, or the content of its assistant message(s)."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion)
