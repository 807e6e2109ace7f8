//! What portcullis keeps between requests: the audit trail, the manifest cache, blob
//! provenance, and staged pushes. Each store owns its own I/O and error type; the
//! pipeline only calls them.

pub mod audit;
pub mod blobs;
pub mod manifests;
pub mod provenance;
pub mod stage;
