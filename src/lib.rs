//! portcullis: a gatekeeper proxy for container registries.
//!
//! The request pipeline reads top to bottom: [`listener`] accepts, [`route`] parses the
//! distribution API path, [`resolve`] turns the name into candidate upstream registries,
//! [`proxy`] forwards through [`upstream`], and [`error`] is the one place where a failure
//! becomes an HTTP status and an OCI error body.

pub mod reference;
pub mod route;
pub mod tls;
