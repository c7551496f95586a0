"""The conversation: the service every platform calls, delivery of job cards and results,
and what a card says."""
