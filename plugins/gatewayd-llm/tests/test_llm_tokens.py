"""Token estimates."""

from __future__ import annotations

from gatewayd_llm import tokens


def test_text_and_chat_estimates() -> None:
    assert tokens.text_tokens("") == 0 and tokens.text_tokens("abcd") == 1
    assert tokens.text_tokens("abcde") == 2
    body = {
        "messages": [
            {"role": "user", "content": "a" * 40},
            {
                "role": "system",
                "content": [
                    {"type": "text", "text": "b" * 8},
                    {"type": "image_url", "image_url": {"url": "x"}},
                ],
            },
        ]
    }
    assert tokens.prompt_tokens("chat", body) == 3 + (4 + 10) + (4 + 2 + tokens.IMAGE_TOKENS)
    assert tokens.prompt_tokens("chat", {"messages": "nope"}) == 0


def test_prompts_inputs_and_output_budgets() -> None:
    assert tokens.prompt_tokens("completions", {"prompt": ["abcd", "abcdabcd"]}) == 3
    assert tokens.prompt_tokens("embeddings", {"input": [1, 2, 3]}) == 3  # token ids
    assert tokens.prompt_tokens("embeddings", {"input": [[1, 2], [3]]}) == 3
    assert tokens.max_output_tokens("chat", {"max_tokens": 10, "n": 3}, 99) == 30
    assert tokens.max_output_tokens("chat", {"max_completion_tokens": 7, "max_tokens": 1}, 9) == 7
    assert tokens.max_output_tokens("chat", {"max_tokens": True}, 99) == 99
    assert tokens.max_output_tokens("embeddings", {"max_tokens": 5}, 99) == 0


def test_answer_estimates() -> None:
    chat = b'{"choices": [{"message": {"content": "abcdabcd"}}, {"message": {"content": "a"}}]}'
    assert tokens.answer_tokens(chat) == 3
    assert tokens.answer_tokens(b'{"choices": [{"text": "abcde"}]}') == 2
    assert tokens.answer_tokens(b"not json") == tokens.answer_tokens(b"{}") == 0
