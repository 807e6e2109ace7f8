//! Random images on disk, in skopeo's `dir:` layout, ready to be pushed.
//!
//! Each layer is a valid uncompressed tar holding one file of random bytes (so dockerd
//! can unpack it too); the config's `diff_ids` are therefore the layer digests. The
//! bytes come from a xorshift generator, streamed in 1 MiB chunks, so a 1 GiB layer
//! costs disk and a few seconds, not memory. Push with `--preserve-digests` so skopeo
//! does not compress the layers on the way.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::tempdir::TestDir;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// A fast, deterministic pseudo-random byte source (xorshift64*).
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    /// Seeded from the clock and a counter: different for every image.
    pub fn fresh() -> XorShift {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        XorShift::new(
            nanos ^ (n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ u64::from(std::process::id()),
        )
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// A blob as written: its digest and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

/// An image in a `dir:` layout.
pub struct OciImage {
    dir: TestDir,
    pub layers: Vec<Blob>,
    pub config: Blob,
    pub manifest_digest: String,
}

impl OciImage {
    /// An image whose layers hold one random file each, of the given sizes in bytes.
    pub fn random(layer_sizes: &[u64]) -> OciImage {
        OciImage::labelled(layer_sizes, &[])
    }

    /// A random image whose config carries these labels too.
    pub fn labelled(layer_sizes: &[u64], labels: &[(&str, &str)]) -> OciImage {
        let dir = TestDir::new("image");
        let mut rng = XorShift::fresh();
        let layers: Vec<Blob> = layer_sizes
            .iter()
            .enumerate()
            .map(|(i, size)| write_layer(dir.path(), &format!("layer{i}.bin"), *size, &mut rng))
            .collect();
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
        let mut label_map = serde_json::Map::new();
        label_map.insert(
            "portcullis.test.seed".into(),
            rng.next_u64().to_string().into(),
        );
        for (k, v) in labels {
            label_map.insert((*k).into(), (*v).into());
        }
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Cmd": ["/layer0.bin"], "Labels": label_map },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": layers.iter().map(|_| serde_json::json!({"created_by": "portcullis test"})).collect::<Vec<_>>(),
        });
        let config = write_blob(dir.path(), config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": config.digest, "size": config.size },
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": LAYER_MEDIA_TYPE, "digest": l.digest, "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let manifest = manifest.to_string();
        std::fs::write(dir.path().join("manifest.json"), &manifest).expect("write manifest.json");
        std::fs::write(
            dir.path().join("version"),
            "Directory Transport Version: 1.1\n",
        )
        .expect("write version");
        let manifest_digest = sha256_digest(manifest.as_bytes());
        OciImage {
            dir,
            layers,
            config,
            manifest_digest,
        }
    }

    /// `dir:<path>`, a skopeo source or destination.
    pub fn reference(&self) -> String {
        format!("dir:{}", self.dir.path().display())
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Every blob: the layers, then the config.
    pub fn blobs(&self) -> Vec<Blob> {
        let mut blobs = self.layers.clone();
        blobs.push(self.config.clone());
        blobs
    }

    pub fn manifest_bytes(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("manifest.json")).expect("read manifest.json")
    }
}

/// Where a `dir:` layout keeps the blob with `digest`.
pub fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join(digest.trim_start_matches("sha256:"))
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
    )
}

/// `sha256:<hex>` of a file, streamed.
pub fn file_digest(path: &Path) -> String {
    use std::io::Read;
    let mut file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("read for digest");
        if n == 0 {
            break;
        }
        context.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(context.finish()))
}

fn write_blob(dir: &Path, bytes: &[u8]) -> Blob {
    let digest = sha256_digest(bytes);
    std::fs::write(blob_path(dir, &digest), bytes).expect("write blob");
    Blob {
        digest,
        size: bytes.len() as u64,
    }
}

/// Streams a one-file tar of `size` random bytes to disk, hashing as it goes.
fn write_layer(dir: &Path, file_name: &str, size: u64, rng: &mut XorShift) -> Blob {
    let partial = dir.join(format!("{file_name}.partial"));
    let mut out = HashingWriter::new(File::create(&partial).expect("create layer"));
    out.write_all(&tar_header(file_name, size))
        .expect("write tar header");
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        rng.fill(&mut chunk[..n]);
        out.write_all(&chunk[..n]).expect("write layer bytes");
        left -= n as u64;
    }
    let padding = (512 - (size % 512) as usize) % 512;
    out.write_all(&vec![0u8; padding + 1024])
        .expect("write tar trailer");
    let (digest, written) = out.finish();
    std::fs::rename(&partial, blob_path(dir, &digest)).expect("name layer by digest");
    Blob {
        digest,
        size: written,
    }
}

fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], value: u64| {
        let text = format!("{:0width$o}\0", value, width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    };
    octal(&mut h[100..108], 0o755);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    h
}

/// Builds an in-memory tar of `(path, contents)` files (for `docker import`).
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, contents) in files {
        out.extend_from_slice(&tar_header(name, contents.len() as u64));
        out.extend_from_slice(contents);
        out.resize(out.len() + (512 - contents.len() % 512) % 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

struct HashingWriter {
    inner: BufWriter<File>,
    context: ring::digest::Context,
    written: u64,
}

impl HashingWriter {
    fn new(file: File) -> HashingWriter {
        HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            context: ring::digest::Context::new(&ring::digest::SHA256),
            written: 0,
        }
    }

    fn finish(mut self) -> (String, u64) {
        self.inner.flush().expect("flush layer");
        (
            format!("sha256:{}", hex::encode(self.context.finish())),
            self.written,
        )
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.context.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Checks that the `dir:` layout at `dir` holds exactly `expected`: the same manifest
/// bytes and byte-identical blobs.
pub fn assert_same_image(expected: &OciImage, dir: &Path) {
    let manifest = std::fs::read(dir.join("manifest.json"))
        .unwrap_or_else(|e| panic!("no manifest.json in {}: {e}", dir.display()));
    assert_eq!(
        sha256_digest(&manifest),
        expected.manifest_digest,
        "manifest differs:\n{}",
        String::from_utf8_lossy(&manifest)
    );
    for blob in expected.blobs() {
        let path = blob_path(dir, &blob.digest);
        assert!(
            path.is_file(),
            "blob {} missing from {}",
            blob.digest,
            dir.display()
        );
        assert_eq!(
            file_digest(&path),
            blob.digest,
            "blob {} differs",
            blob.digest
        );
    }
}
