//! Digest-addressed manifests are immutable, so they can be served from memory.
//!
//! The cache is bounded by bytes, not entries. A key holds the registry **and repository**:
//! a digest known in one repository must not be served for another the client may not be
//! allowed to read. Only responses fetched as an identity shared by every client
//! (anonymous or configured credentials) are cached, never those fetched with a client's
//! own credentials.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ManifestKey {
    pub registry: String,
    pub repository: String,
    pub digest: String,
}

#[derive(Debug)]
pub struct CachedManifest {
    pub body: Bytes,
    pub content_type: Option<HeaderValue>,
}

#[derive(Clone)]
pub struct ManifestCache {
    inner: Option<moka::future::Cache<ManifestKey, Arc<CachedManifest>>>,
}

impl ManifestCache {
    /// `max_bytes == 0` disables the cache.
    pub fn new(max_bytes: u64) -> ManifestCache {
        let inner = (max_bytes > 0).then(|| {
            moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|k: &ManifestKey, v: &Arc<CachedManifest>| {
                    let size =
                        v.body.len() + k.registry.len() + k.repository.len() + k.digest.len() + 64;
                    u32::try_from(size).unwrap_or(u32::MAX)
                })
                .build()
        });
        ManifestCache { inner }
    }

    pub async fn get(&self, key: &ManifestKey) -> Option<Arc<CachedManifest>> {
        self.inner.as_ref()?.get(key).await
    }

    pub async fn insert(&self, key: ManifestKey, manifest: CachedManifest) {
        if let Some(cache) = &self.inner {
            cache.insert(key, Arc::new(manifest)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(repo: &str) -> ManifestKey {
        ManifestKey {
            registry: "r".into(),
            repository: repo.into(),
            digest: "sha256:00".into(),
        }
    }

    #[tokio::test]
    async fn digests_are_cached_per_repository() {
        let cache = ManifestCache::new(1 << 20);
        cache
            .insert(
                key("a"),
                CachedManifest {
                    body: Bytes::from_static(b"{}"),
                    content_type: None,
                },
            )
            .await;
        assert!(cache.get(&key("a")).await.is_some());
        assert!(
            cache.get(&key("b")).await.is_none(),
            "another repository must ask its upstream"
        );
    }

    #[tokio::test]
    async fn a_zero_budget_disables_the_cache() {
        let cache = ManifestCache::new(0);
        cache
            .insert(
                key("a"),
                CachedManifest {
                    body: Bytes::from_static(b"{}"),
                    content_type: None,
                },
            )
            .await;
        assert!(cache.get(&key("a")).await.is_none());
    }
}
