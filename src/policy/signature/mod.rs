//! Signature policy formats: containers-policy.json(5) ([`containers_policy`]) and
//! containers-registries.d(5) ([`registries_d`]), parsed as strictly as containers/image
//! parses them, and the docker-transport scope precedence both use ([`scope`]).
//!
//! Pure and not yet wired into the proxy: nothing here does I/O beyond reading the files it
//! is given, and nothing enforces what it parses.

pub mod containers_policy;
pub mod evaluate;
pub mod identity;
mod json;
pub mod registries_d;
pub mod scope;
pub mod trust;
pub mod verify;

pub use containers_policy::{requirements_for, PolicyJson, Requirement, SignedIdentity};
pub use scope::ImageRef;
