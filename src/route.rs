//! Distribution API routes (placeholder, being written).
