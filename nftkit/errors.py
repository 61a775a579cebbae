"""User-facing errors: each names the problem and the fix in one line."""


class NftkitError(Exception):
    """A problem with the user's input or environment (not a bug in nftkit).

    The CLI prints ``str(error)`` as a single line and exits non-zero, without a traceback.
    """


class ConfigError(NftkitError):
    """A config, recipe or override that does not validate."""


class DataError(NftkitError):
    """A dataset that is missing, empty or does not fit the model."""


class ModelError(NftkitError):
    """A model or checkpoint that cannot be used as given."""


class Interrupted(NftkitError):
    """The user stopped a run (Ctrl-C); what was finished is kept and the message says how to resume."""
