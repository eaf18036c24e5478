"""A versioned model registry on a local directory or S3. Knows nothing of Ray or ML frameworks."""
from .config import RegistryConfig
from .errors import AliasConflict, IntegrityError, InvalidName, NotFound, RegistryError, RegistryUnavailable, VersionExists
from .metadata import ModelMetadata
from .registry import ModelRegistry, verify_directory
from .stores import LocalStore, S3Store

__all__ = ["RegistryConfig", "ModelRegistry", "ModelMetadata", "LocalStore", "S3Store", "verify_directory",
           "RegistryError", "NotFound", "VersionExists", "AliasConflict", "IntegrityError", "InvalidName",
           "RegistryUnavailable"]
