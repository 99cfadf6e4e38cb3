"""Tiny random demo models: a Llama-3 with a real tokenizer, PEFT LoRA adapters and a tiny SDXL."""
