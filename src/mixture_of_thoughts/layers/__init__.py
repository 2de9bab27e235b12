"""Building blocks: normalisation, rotary attention with a KV cache, dense FFN, thought branches."""
