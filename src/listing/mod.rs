//! Answers that span registries rather than one repository: `docker search` across the
//! search registries, the merged `/v2/_catalog`, and tag-list pagination made uniform.

pub mod catalog;
pub mod search;
pub mod tags;
