//! Image reference grammar (placeholder, being written).
