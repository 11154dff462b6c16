"""The file formats Itamae reads and writes: Hugging Face safetensors folders (hf_reader),
GGUF (header reader, tensor plan, writer, tokenizer, quant maths),
Itamae's torch format with its own quant maths, and `detect`, which says what a path is."""
