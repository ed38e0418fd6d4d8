"""Errors a user can act on; every face (CLI, API, worker) maps them once."""


class GranttagError(Exception):
    """An error the user can act on; the message is shown as is."""


class InvalidInputError(GranttagError):
    """A record, file or argument that cannot be used as given."""


class TaxonomyError(GranttagError):
    """The taxonomy file is missing or malformed, or a label is unknown."""


class ModelNotFoundError(GranttagError):
    """No model version with that name, or no active model."""


class ModelIntegrityError(GranttagError):
    """A model file failed its checksum, or was built for another taxonomy or library."""


class TrainingDataError(GranttagError):
    """Training data that cannot be used (unknown labels, too few examples...)."""


class ConfigurationError(GranttagError):
    """Settings that cannot be used (no API keys, an unreadable key file...); raised at start-up."""


class JobNotFoundError(GranttagError):
    """No batch-tagging job with that id (issue 4)."""


class ServiceUnavailableError(GranttagError):
    """A service the command needs (Redis, a database) does not answer (issue 4)."""
