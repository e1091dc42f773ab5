"""expo-gguf: ExPO extrapolation straight to GGUF, and an offline chat on top of it."""
