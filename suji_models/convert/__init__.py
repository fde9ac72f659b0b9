"""Checkpoint conversion: transformers (bert/roformer/albert/gpt2) and TensorFlow checkpoints to and from Suji."""
