"""The llama.cpp backend (GGUF files through llama-cpp-python); see backend.py."""
