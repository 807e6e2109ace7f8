//! skopeo and podman, each in a jail with its own `/etc/containers` (policy,
//! registries.conf), `/var/lib/containers`, `/run`, auth file and temporary directory.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use super::jail::Jail;
use super::process::{describe, run};
use super::tempdir::TestDir;

const TIMEOUT: Duration = Duration::from_secs(600);

const POLICY: &str = r#"{"default":[{"type":"insecureAcceptAnything"}]}"#;

/// The private world of one containers/image client.
struct ClientWorld {
    dir: TestDir,
    jail: Jail,
}

impl ClientWorld {
    fn new(what: &str) -> ClientWorld {
        let dir = TestDir::new(what);
        let jail = Jail::new(dir.path())
            .private("/etc/containers")
            .private("/var/lib/containers");
        let etc = jail.dir("/etc/containers");
        std::fs::write(etc.join("policy.json"), POLICY).expect("write policy.json");
        std::fs::write(etc.join("registries.conf"), "").expect("write registries.conf");
        std::fs::create_dir_all(etc.join("registries.d")).expect("create registries.d");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("create tmp");
        std::fs::write(dir.path().join("auth.json"), "{}").expect("write auth.json");
        ClientWorld { dir, jail }
    }

    fn command(&self, program: &str) -> Command {
        let mut command = self.jail.command(program);
        command
            .env("REGISTRIES_CONFIG_PATH", "/etc/containers/registries.conf")
            .env("REGISTRY_AUTH_FILE", self.dir.path().join("auth.json"))
            .env("XDG_RUNTIME_DIR", "/run")
            .env("TMPDIR", self.dir.path().join("tmp"))
            .env("HOME", self.dir.subdir("home"))
            .env_remove("DOCKER_CONFIG");
        command
    }

    fn registries_conf(&self, toml: &str) {
        std::fs::write(
            self.jail.dir("/etc/containers").join("registries.conf"),
            toml,
        )
        .expect("write registries.conf");
    }
}

/// skopeo with a private configuration: `Skopeo::new().copy(&from, &to, &[...])`.
pub struct Skopeo {
    world: ClientWorld,
}

impl Skopeo {
    pub fn new() -> Skopeo {
        Skopeo {
            world: ClientWorld::new("skopeo"),
        }
    }

    /// Replaces the private `registries.conf`.
    pub fn registries_conf(&self, toml: &str) {
        self.world.registries_conf(toml);
    }

    /// The authentication file used for every command.
    pub fn authfile(&self) -> PathBuf {
        self.world.dir.path().join("auth.json")
    }

    /// Runs `skopeo <args>` and returns its output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_env(args, &[])
    }

    /// Runs `skopeo <args>` with extra environment variables (e.g. `HTTPS_PROXY`).
    pub fn run_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = self.world.command("skopeo");
        command.envs(env.iter().copied());
        command
            .arg("--registries.d")
            .arg("/etc/containers/registries.d");
        command.args(args);
        run(command, None, TIMEOUT)
    }

    /// Runs `skopeo <args>` and panics with its output if it fails.
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "skopeo {args:?} failed:\n{}",
            describe(&out)
        );
        out
    }

    /// `skopeo copy --preserve-digests --retry-times 0 <extra> <from> <to>`.
    pub fn copy(&self, from: &str, to: &str, extra: &[&str]) -> Output {
        let mut args = vec!["copy", "--preserve-digests"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[from, to]);
        self.run(&args)
    }

    /// The raw manifest bytes of a registry image.
    pub fn inspect_raw(&self, reference: &str, extra: &[&str]) -> Vec<u8> {
        let mut args = vec!["inspect", "--raw"];
        args.extend_from_slice(extra);
        args.push(reference);
        self.ok(&args).stdout
    }
}

impl Default for Skopeo {
    fn default() -> Self {
        Skopeo::new()
    }
}

/// podman with private storage (vfs), run root, configuration and auth file.
pub struct Podman {
    world: ClientWorld,
}

impl Podman {
    pub fn new() -> Podman {
        Podman {
            world: ClientWorld::new("podman"),
        }
    }

    pub fn registries_conf(&self, toml: &str) {
        self.world.registries_conf(toml);
    }

    /// Runs `podman <args>` with private storage.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_env(args, &[])
    }

    /// Runs `podman <args>` with extra environment variables (e.g. `HTTPS_PROXY`).
    pub fn run_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = self.world.command("podman");
        command.envs(env.iter().copied());
        command
            .arg("--root")
            .arg(self.world.dir.subdir("storage"))
            .arg("--runroot")
            .arg(self.world.dir.subdir("runroot"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .args(args);
        run(command, None, TIMEOUT)
    }
}

impl Default for Podman {
    fn default() -> Self {
        Podman::new()
    }
}

/// buildah with private storage (vfs), run root and configuration.
pub struct Buildah {
    world: ClientWorld,
}

impl Buildah {
    pub fn new() -> Buildah {
        Buildah {
            world: ClientWorld::new("buildah"),
        }
    }

    /// Runs `buildah <args>` with private storage.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut command = self.world.command("buildah");
        command
            .arg("--root")
            .arg(self.world.dir.subdir("storage"))
            .arg("--runroot")
            .arg(self.world.dir.subdir("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        run(command, None, TIMEOUT)
    }
}

impl Default for Buildah {
    fn default() -> Self {
        Buildah::new()
    }
}
