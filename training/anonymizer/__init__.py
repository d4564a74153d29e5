"""Anonymization track: the LoRA-adapted SD2/SDXL inpainting generator (generator), the tiny random base
that stands in for the real weights (tiny_base) and CLIP's tokenizer files built offline (clip_vocab).

Submodules are imported explicitly; `generator` and `clip_vocab` load diffusers/transformers only when a
function needs them, so folder checks stay cheap to import.
"""
