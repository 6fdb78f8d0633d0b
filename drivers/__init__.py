"""massgate drivers: talk to instruments, decode what they say, never write to them."""
