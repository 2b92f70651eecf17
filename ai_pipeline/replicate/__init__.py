"""Talking to Replicate through the official client: create, wait, cancel, reconcile; errors; rate limit."""
