"""Turning one checkpoint into another: `convert(src, dest, recipe)`, the one recipe table, and
the second pass of the K-quant and MoE recipes through llama.cpp's own quantizer."""
