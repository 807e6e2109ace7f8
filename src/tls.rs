//! Local CA and TLS configuration (placeholder, being written).
