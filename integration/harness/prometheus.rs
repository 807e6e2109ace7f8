//! A real Prometheus server (Debian's `prometheus`) scraping the given targets every second,
//! with its own TSDB in the test's directory, and a client for its HTTP query API.
//!
//! Also the plain-HTTP `GET` the admin listener and Prometheus both need.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::net::{free_port, port_was_taken, wait_for, PORT_ATTEMPTS};
use super::process::Supervised;
use super::tempdir::TestDir;

/// One sample of an instant-query result: its labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub struct Prometheus {
    process: Supervised,
    addr: SocketAddr,
    job: String,
    dir: TestDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`/metrics` over HTTP) as job `job` every second,
    /// and waits until it is ready and has scraped every target successfully once.
    pub fn start(job: &str, targets: &[SocketAddr]) -> Prometheus {
        let dir = TestDir::new("prometheus");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = dir.write(
            "prometheus.yml",
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
        );
        for attempt in 0..PORT_ATTEMPTS {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let mut command = Command::new("prometheus");
            command
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.subdir(&format!("data-{attempt}")).display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn");
            let log = dir.path().join(format!("prometheus-{attempt}.log"));
            let mut process = Supervised::spawn("prometheus", command, &log);
            let ready = wait_for(Duration::from_secs(60), || {
                if process.exit_status().is_some() {
                    return Some(false);
                }
                matches!(http_get(addr, "/-/ready"), Ok((200, _))).then_some(true)
            });
            match ready {
                Some(true) => {
                    let prometheus = Prometheus {
                        process,
                        addr,
                        job: job.to_string(),
                        dir,
                    };
                    prometheus.wait_until_up(targets.len());
                    return prometheus;
                }
                Some(false) if port_was_taken(&process.log()) => continue,
                _ => panic!(
                    "prometheus did not become ready on {addr}:\n{}",
                    process.log()
                ),
            }
        }
        panic!("prometheus found no free port in {PORT_ATTEMPTS} attempts");
    }

    fn wait_until_up(&self, targets: usize) {
        let query = format!("sum(up{{job=\"{}\"}})", self.job);
        let up = wait_for(Duration::from_secs(30), || {
            (self.value(&query) == Some(targets as f64)).then_some(())
        });
        assert!(
            up.is_some(),
            "prometheus did not scrape all {targets} targets: {:?}\n{}",
            self.query(&format!("up{{job=\"{}\"}}", self.job)),
            self.process.log()
        );
    }

    /// Waits until every target has been scraped after this moment, so instant queries
    /// see everything done before the call.
    pub fn scraped_after_now(&self) {
        let now = unix_now();
        let query = format!("min(timestamp(up{{job=\"{}\"}}))", self.job);
        let done = wait_for(Duration::from_secs(30), || {
            self.value(&query).filter(|t| *t > now).map(|_| ())
        });
        assert!(done.is_some(), "no scrape after {now} within 30 s");
    }

    /// The raw JSON answer of `/api/v1/query?query=<promql>`, or why there is none (an invalid
    /// expression is an `Err` carrying Prometheus's error).
    pub fn query_json(&self, promql: &str) -> Result<serde_json::Value, String> {
        let q: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let (status, body) = http_get(self.addr, &format!("/api/v1/query?query={q}"))?;
        let json: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
        if status != 200 || json["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(json)
    }

    /// The samples of an instant vector query; panics if the query fails.
    pub fn query(&self, promql: &str) -> Vec<Sample> {
        let json = self
            .query_json(promql)
            .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        json["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("query {promql}: not a vector: {json}"))
            .iter()
            .map(|s| Sample {
                labels: serde_json::from_value(s["metric"].clone()).unwrap_or_default(),
                value: s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN),
            })
            .collect()
    }

    /// The value of a query that yields at most one sample (`None` when it yields none).
    pub fn value(&self, promql: &str) -> Option<f64> {
        let samples = self.query(promql);
        assert!(
            samples.len() <= 1,
            "{promql} gave several samples: {samples:?}"
        );
        samples.first().map(|s| s.value)
    }

    /// Like [`Prometheus::value`], with no sample meaning 0 (a counter not yet created).
    pub fn count(&self, promql: &str) -> f64 {
        self.value(promql).unwrap_or(0.0)
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// `GET path` over plain HTTP/1.0 (no chunking, the server closes): status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP head in {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}
