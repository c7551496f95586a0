"""Slack: adapter, conversions, poster, the photo coach's question."""
