"""Who may call: gateway keys and rate limits."""
