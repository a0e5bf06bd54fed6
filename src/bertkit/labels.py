"""Label values shared by the data, the tasks and the heads; no imports, so any layer may use them."""

IGNORE = -100  # label value that takes no part in a loss (padding, special tokens, unmasked tokens)
