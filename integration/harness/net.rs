//! Loopback ports and waiting.

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1 (bind `:0`, read it, release it).
/// Whoever uses it must retry with another one if it was taken in between.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Polls `ready` every 50 ms until it returns `Some`, or gives up after `timeout`.
pub fn wait_for<T>(timeout: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = ready() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many times a server start is retried when its port was taken meanwhile.
pub const PORT_ATTEMPTS: usize = 5;

/// Whether a server log says its port was taken.
pub fn port_was_taken(log: &str) -> bool {
    log.contains("address already in use") || log.contains("Address already in use")
}
