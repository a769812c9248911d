"""Use a model: generate text, chat in the terminal, serve it through llama.cpp or vLLM."""
