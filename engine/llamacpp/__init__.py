"""The llama.cpp backend (GGUF files through llama-cpp-python): backend.py runs a chat,
memory_plan.py (with placement.py, model_layout.py, devices.py) decides where the weights
go before loading, scorer.py hands the quality report every position's logits."""
