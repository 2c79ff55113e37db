"""The local LLM: llama.cpp's own HTTP server (the xllamacpp wheel) serving a
packaged GGUF model on loopback, as the platform's simple tier on a laptop or CI."""
