"""An app whose import fails, as a missing dependency would."""
import shoal_test_missing_dependency  # noqa: F401
