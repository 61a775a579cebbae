"""seq2seq adapter (in progress)."""
