"""Exceptions raised by dpcache, each with a message a user can act on."""


class DPCacheError(ValueError):
    """Base class: bad input or a configuration that cannot work."""


class CostTensorError(DPCacheError):
    """A file or array that is not a valid cost tensor (wrong shape, NaN, pickle, not a tensor file)."""


class CostTensorMismatchError(DPCacheError):
    """A cost tensor whose metadata does not match the configuration it is used with."""


class UnreachablePlanError(DPCacheError):
    """No schedule with the requested budget satisfies the mandatory steps and the maximum jump."""


class ScheduleMismatchError(DPCacheError):
    """A pipeline call whose step count differs from the schedule's."""
