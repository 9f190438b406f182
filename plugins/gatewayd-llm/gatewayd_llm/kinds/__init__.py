"""The provider kinds: each speaks one provider wire format and answers in OpenAI's."""
