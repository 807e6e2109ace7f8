//! Processes a test started, stopped by PID on drop.
//!
//! A PID is only signalled after checking, through `/proc/<pid>/stat`, that it still
//! names the process we started (same start time). Descendants (containerd under
//! dockerd, for instance) are recorded before the stop and killed the same way if
//! they outlive their parent.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a process gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// A PID together with the start time that makes it unique.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    start_time: u64,
}

impl ProcessId {
    /// The process now running as `pid`, if any.
    pub fn of(pid: u32) -> Option<ProcessId> {
        let stat = Stat::read(pid)?;
        Some(ProcessId {
            pid,
            start_time: stat.start_time,
        })
    }

    /// Whether this very process is still alive (zombies count as dead).
    pub fn is_alive(&self) -> bool {
        matches!(Stat::read(self.pid), Some(s) if s.start_time == self.start_time && !s.is_zombie())
    }

    /// Sends `signal` only if the PID still belongs to this process.
    fn signal(&self, signal: Signal) {
        if self.is_alive() {
            let _ = kill(Pid::from_raw(self.pid as i32), signal);
        }
    }

    /// Every living descendant, children first.
    pub fn descendants(&self) -> Vec<ProcessId> {
        let all: Vec<(u32, Stat)> = std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                    .filter_map(|pid| Some((pid, Stat::read(pid)?)))
                    .collect()
            })
            .unwrap_or_default();
        let mut found = vec![*self];
        let mut i = 0;
        while i < found.len() {
            let parent = found[i].pid;
            for (pid, stat) in &all {
                if stat.ppid == parent && !stat.is_zombie() {
                    found.push(ProcessId {
                        pid: *pid,
                        start_time: stat.start_time,
                    });
                }
            }
            i += 1;
        }
        found.remove(0);
        found
    }
}

struct Stat {
    state: char,
    ppid: u32,
    start_time: u64,
}

impl Stat {
    fn read(pid: u32) -> Option<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let rest = &text[text.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(Stat {
            state: fields.first()?.chars().next()?,
            ppid: fields.get(1)?.parse().ok()?,
            start_time: fields.get(19)?.parse().ok()?,
        })
    }

    fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// A long-running process whose output goes to a log file, stopped on drop.
pub struct Supervised {
    name: String,
    child: Child,
    id: ProcessId,
    log: PathBuf,
}

impl Supervised {
    /// Spawns `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Supervised {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("open log file");
        let err = out.try_clone().expect("clone log file handle");
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({command:?}): {e}"));
        let pid = child.id();
        let id = ProcessId::of(pid).unwrap_or(ProcessId { pid, start_time: 0 });
        Supervised {
            name: name.to_string(),
            child,
            id,
            log: log.to_path_buf(),
        }
    }

    pub fn id(&self) -> ProcessId {
        self.id
    }

    pub fn pid(&self) -> u32 {
        self.id.pid
    }

    /// The process and its living descendants.
    pub fn process_tree(&self) -> Vec<ProcessId> {
        let mut ids = vec![self.id];
        ids.extend(self.id.descendants());
        ids
    }

    /// `None` while running, the exit status once it has ended.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// SIGTERM, a grace period, then SIGKILL; the same for descendants left behind.
    pub fn stop(&mut self) {
        let tree = self.id.descendants();
        if self.exit_status().is_none() {
            self.id.signal(Signal::SIGTERM);
            let deadline = Instant::now() + GRACE;
            while self.exit_status().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.exit_status().is_none() {
                self.id.signal(Signal::SIGKILL);
                let _ = self.child.wait();
            }
        }
        let deadline = Instant::now() + GRACE;
        while tree.iter().any(ProcessId::is_alive) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for left in tree.iter().filter(|p| p.is_alive()) {
            left.signal(Signal::SIGKILL);
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            print_log_tail(&self.name, &self.log);
        }
    }
}

/// Prints the last lines of a log (used when a test fails).
pub fn print_log_tail(name: &str, log: &Path) {
    let text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(40)..];
    eprintln!(
        "----- last {} lines of {name} log ({}) -----",
        tail.len(),
        log.display()
    );
    for line in tail {
        eprintln!("{line}");
    }
}

/// Runs a short-lived command to completion, killing it (by PID) after `timeout`.
pub fn run(mut command: Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    let id = ProcessId::of(child.id());
    let feeder = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = pipe.write_all(&bytes);
        })
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(timeout).is_err() {
            if let Some(id) = id {
                for p in id.descendants().into_iter().chain([id]) {
                    p.signal(Signal::SIGKILL);
                }
            }
        }
    });
    let output = child.wait_with_output().expect("wait for command");
    let _ = tx.send(());
    let _ = watchdog.join();
    if let Some(f) = feeder {
        let _ = f.join();
    }
    output
}

/// Output as text, for assertions and failure messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
