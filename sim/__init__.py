"""servesim: a discrete-event simulator of LLM inference clusters."""
