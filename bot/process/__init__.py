"""The bot process of `dreambot up` (server, asyncio runtime, its console) and the worker
processes it keeps alive (launcher, supervisor, locks, worker rows)."""
