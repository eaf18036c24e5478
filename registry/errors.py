"""Registry errors: each carries a message fit to show a user as is (the CLI prints it). Messages may
name the store (its path, or s3://bucket/prefix and the endpoint): the serving path logs them and
tells its clients what failed, never where (serve_app/errors.py: `withheld`, `not_found`)."""


class RegistryError(Exception):
    """Base class of everything the registry raises on purpose."""


class InvalidName(RegistryError, ValueError):
    pass


class NotFound(RegistryError, LookupError):
    pass


class VersionExists(RegistryError):
    pass


class AliasConflict(RegistryError):
    """An alias moved under us: its ETag no longer matches what the caller read."""


class IntegrityError(RegistryError):
    """A file's bytes do not match the version's checksum manifest."""


class RegistryUnavailable(RegistryError):
    """The store could not be reached (S3 endpoint down, bucket missing, permissions)."""
