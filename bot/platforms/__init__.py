"""Platform adapters: each converts platform events to service calls and replies back."""
