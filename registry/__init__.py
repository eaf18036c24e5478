"""A versioned registry of models and datasets on a local directory or S3. Knows nothing of Ray or ML
frameworks."""
from .config import RegistryConfig
from .errors import AliasConflict, IntegrityError, InvalidName, NotFound, RegistryError, RegistryUnavailable, VersionExists
from .datasets import DatasetRegistry
from .feedback import FeedbackItem, FeedbackLog
from .metadata import DatasetMetadata, ModelMetadata
from .registry import ModelRegistry, verify_directory
from .stores import LocalStore, S3Store

__all__ = ["RegistryConfig", "ModelRegistry", "ModelMetadata", "DatasetRegistry", "DatasetMetadata", "LocalStore",
           "S3Store", "FeedbackLog", "FeedbackItem", "verify_directory", "RegistryError", "NotFound",
           "VersionExists", "AliasConflict", "IntegrityError", "InvalidName", "RegistryUnavailable"]
