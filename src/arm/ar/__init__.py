"""The unified autoregressive stage (ARM §2): decoder, Hugging Face import, caption LM."""
