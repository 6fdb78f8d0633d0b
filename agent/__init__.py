"""massgate agent: totalizer, balance, outbox, publisher, runtime and command line."""
