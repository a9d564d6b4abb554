//! Local message ids in the provider's shape.
