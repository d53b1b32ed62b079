"""Dead letters: their headers and stream (letters), reading them (store), replay, view, CLI."""
