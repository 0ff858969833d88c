"""Exception types of the engine.

Every error a user can cause (bad files, bad arguments, impossible sizes) is a FlexMergeError
subclass with a one-line message naming the culprit (file, task, tensor, option). The CLI turns
exactly these into exit code 2 and the app into an in-page message; anything else is a bug.
"""


class FlexMergeError(Exception):
    """Base class of all user-facing errors."""


class ZooError(FlexMergeError):
    """A zoo folder, manifest or checkpoint is missing, malformed, unsafe or inconsistent."""


class InvalidArgumentError(FlexMergeError, ValueError):
    """An option has a bad value: unknown name, out of range, wrong type, NaN size, ..."""


class BudgetError(InvalidArgumentError):
    """A size budget is not a number or not positive."""


class CacheError(FlexMergeError):
    """The cache directory cannot be used (read-only, full disk, ...)."""


class ResourceError(FlexMergeError):
    """The requested work would not fit in the memory of this machine."""
