"""One exception tree. Messages are written for the person who will read them."""

from __future__ import annotations


class DreambotError(Exception):
    """Base of every error dreambot raises on purpose."""


class UserFacingError(DreambotError):
    """Safe to show in chat as it is: says what went wrong and what to do."""


class Refused(UserFacingError):
    """A request this person may not make (or not yet): someone else's item, an untrained
    subject, a hidden image. The agent relays it to the model as a tool error."""


class QuotaExceeded(UserFacingError):
    pass


class Blocked(UserFacingError):
    pass


class NotFound(UserFacingError):
    pass


class LLMBudgetExceeded(UserFacingError):
    pass


class IllegalTransition(DreambotError):
    """A job was asked to move between states the lifecycle does not allow."""


class JobCancelled(DreambotError):
    """Raised inside a running job's work when someone asked to cancel it."""


class LeaseLost(DreambotError):
    """This worker's claim on a job is no longer current (swept, cancelled or finished)."""


class SchemaOutdated(DreambotError):
    """The database schema is older (or newer) than this code."""


class StorageKeyError(DreambotError, ValueError):
    """A storage key that is empty, absolute or escapes the storage root."""
