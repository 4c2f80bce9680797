//! A real broker process on loopback, for black-box tests.
#![allow(dead_code)]

pub mod cluster;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SPATE: &str = env!("CARGO_BIN_EXE_spate");

/// A client for tests: short timeouts, so a broken broker fails a test quickly.
pub fn client_config(bootstrap: &str) -> spate_client::ClientConfig {
    spate_client::ClientConfig {
        bootstrap: bootstrap.to_string(),
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        ..spate_client::ClientConfig::default()
    }
}

/// A base port whose next three ports (client port + two shard ports) are free now and were
/// never handed out before in this process (tests run in parallel). Ports come from below the
/// kernel's ephemeral range, so no client socket can be holding one as its source port.
pub fn free_ports() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let spread = std::process::id() % 2000;
    for _ in 0..2000 {
        let slot = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let base = 20_000 + ((spread + slot) % 2500) as u16 * 4;
        if (0..=3).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free ports below 30000");
}

/// How many times the broker log at `log` says the broker started serving.
fn served_count(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches("spate is serving").count()
}

pub struct Broker {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
}

impl Broker {
    pub fn start(dir: &Path) -> Broker {
        Broker::start_on(dir, free_ports(), &[])
    }

    pub fn start_on(dir: &Path, port: u16, extra: &[&str]) -> Broker {
        Broker::start_with_cores(dir, port, 2, extra)
    }

    pub fn start_with_cores(dir: &Path, port: u16, cores: usize, extra: &[&str]) -> Broker {
        Broker::start_with_command(dir, port, cores, extra, Command::new(SPATE))
    }

    /// A broker with `vars` added to its environment.
    pub fn start_with_env(dir: &Path, vars: &[(&str, &str)]) -> Broker {
        let mut command = Command::new(SPATE);
        command.envs(vars.iter().copied());
        Broker::start_with_command(dir, free_ports(), 2, &[], command)
    }

    /// A broker whose open-files limit (soft and hard) is `limit`.
    pub fn start_with_open_files_limit(dir: &Path, limit: u64) -> Broker {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(SPATE);
        // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
        unsafe {
            command.pre_exec(move || {
                let rlimit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Broker::start_with_command(dir, free_ports(), 2, &[], command)
    }

    fn start_with_command(
        dir: &Path,
        port: u16,
        cores: usize,
        extra: &[&str],
        mut command: Command,
    ) -> Broker {
        let log = dir.with_extension(format!("broker-{port}.log"));
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        // A restart appends to the same log: readiness is one more "serving" line than now.
        let served_before = served_count(&log);
        let child = command
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--cores", &cores.to_string()])
            // Beside the data directory, so a killed test broker leaves nothing on /dev/shm.
            .arg("--journal-dir")
            .arg(dir.with_extension("journal"))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn spate serve");
        let mut broker = Broker { child: Some(child), dir: dir.to_path_buf(), port, log };
        broker.wait_ready(served_before);
        broker
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Ready means this process said "spate is serving" (every listener is bound by then) and
    /// its client port accepts. The port alone is not enough: a connection can be accepted by
    /// another process's short-lived socket on the same port (a port probe elsewhere on the
    /// machine) before the broker has bound it, and the test's next command is then refused.
    fn wait_ready(&mut self, served_before: usize) {
        let started = Instant::now();
        let address: SocketAddr = self.address().parse().unwrap();
        while started.elapsed() < Duration::from_secs(20) {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("broker exited ({status}) before serving; log:\n{}", self.log_text());
            }
            if served_count(&self.log) > served_before
                && TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("broker did not start; log:\n{}", self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a `spate` client command against this broker.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_input(args, None)
    }

    pub fn cli_with_input(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        use std::io::Write;
        let mut child = Command::new(SPATE)
            .args(args)
            .args(["-b", &self.address()])
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn spate");
        if let Some(input) = input {
            let mut stdin = child.stdin.take().unwrap();
            let input = input.to_vec();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
        child.wait_with_output().unwrap()
    }

    /// Runs a client command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "spate {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
            self.wait_port_closed();
        }
    }

    /// After a kill, the kernel tears the dead process's io_uring (and the accepts it holds on
    /// the listening sockets) down asynchronously; wait until the client port refuses.
    fn wait_port_closed(&self) {
        let address: SocketAddr = self.address().parse().unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("port {} still accepting 10 s after the broker was killed", self.port);
    }

    /// SIGTERM; returns the exit status.
    /// SIGSTOP: the process stops as a long GC pause or a hung VM would, sockets open.
    pub fn pause(&self) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: kill only sends a signal to our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGSTOP);
        }
    }

    /// SIGCONT after [`pause`](Broker::pause).
    pub fn resume(&self) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: as in `pause`.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGCONT);
        }
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.wait_port_closed();
                return status;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "broker did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// A test's temporary directory. A broker started on the directory itself keeps its journal
/// and log beside it (`NAME.journal`, `NAME.broker-PORT.log`, see `start_with_command`), so
/// dropping it removes those too: they used to stay in the temp directory after every run
/// (hundreds of them, some journals 50 MB).
pub struct TestDir(Option<tempfile::TempDir>);

impl TestDir {
    /// Keeps the directory (and whatever lies beside it) for a post-mortem; returns its path.
    #[allow(dead_code)] // not every test binary keeps one
    pub fn keep(mut self) -> PathBuf {
        self.0.take().expect("held until dropped").keep()
    }
}

impl std::ops::Deref for TestDir {
    type Target = tempfile::TempDir;
    fn deref(&self) -> &tempfile::TempDir {
        self.0.as_ref().expect("held until dropped")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let Some(dir) = &self.0 else { return };
        let path = dir.path();
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else { return };
        let prefix = format!("{}.", name.to_string_lossy());
        let Ok(entries) = std::fs::read_dir(parent) else { return };
        // Bounded by the directory's entries.
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let sibling = entry.path();
                let _ =
                    std::fs::remove_dir_all(&sibling).or_else(|_| std::fs::remove_file(&sibling));
            }
        }
    }
}

pub fn temp_dir() -> TestDir {
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    TestDir(Some(tempfile::Builder::new().prefix("spate-broker-").tempdir_in(base).unwrap()))
}

/// Runs `future` on a fresh Glommio executor on this thread.
pub fn run<T>(future: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().unwrap().run(future)
}

/// Mounts a tmpfs of `size` at a fresh directory; unmounted on drop.
pub struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs (this test needs root)");
        Tmpfs(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}
