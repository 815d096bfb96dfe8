"""How a dataset row becomes model input text. Shared by the rollout actors and the learner, so
both sides tokenize exactly the same prompt. Pure Python: the chat template itself comes from the
model's processor, passed in.
"""

from __future__ import annotations

from typing import Protocol

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
ANSWER_INSTRUCTION = "Answer with the option letter inside <answer></answer>."


class ChatTemplater(Protocol):
    def apply_chat_template(self, conversation: list, **kwargs) -> str: ...


def user_text(question: str, options: list[str] | tuple[str, ...]) -> str:
    """The user turn's text: the question, lettered options, and the answer convention."""
    if not options:
        return f"{question}\nAnswer inside <answer></answer>."
    return "\n".join([question] + [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options)] + [ANSWER_INSTRUCTION])


def chat_text(templater: ChatTemplater, question: str, options: list[str] | tuple[str, ...]) -> str:
    """The full prompt string (one video, then the text), rendered by the model's own chat template."""
    content = [{"type": "video"}, {"type": "text", "text": user_text(question, options)}]
    conversation = [{"role": "user", "content": content}]
    return templater.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def vision_token_ids(tokenizer) -> list[int]:
    """Ids of Qwen2-VL's vision markers and placeholders in a tokenizer's (or processor's) vocabulary: never a
    valid output token (the rollout engine forbids them; the learner drops a group that holds one)."""
    vocab = getattr(tokenizer, "tokenizer", tokenizer).get_vocab()
    return sorted(vocab[t] for t in VISION_TOKENS if t in vocab)
