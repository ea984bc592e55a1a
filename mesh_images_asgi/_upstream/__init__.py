"""The upstream HTTP client interface and its adapters."""
