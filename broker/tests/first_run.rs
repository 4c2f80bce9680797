//! The first five minutes, as a new user lives them: README's quick start run literally from a
//! fresh directory, `spate produce` into a full disk, and `--print-offsets` across a broker
//! crash. Real `spate` processes on loopback, real disks.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const README: &str = include_str!("../../README.md");

/// The fenced `sh` blocks of README's "Quick start" section, in order.
fn quick_start_blocks() -> Vec<Vec<String>> {
    let section = README
        .split("\n## ")
        .find(|s| s.starts_with("Quick start"))
        .expect("README has a Quick start section");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in section.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().expect("open block")),
            (Some(block), text) => block.push(text.to_string()),
            (None, _) => {}
        }
    }
    blocks
}

/// The quick start's `serve` line, as the arguments it passes to `spate`.
fn readme_serve_args() -> Vec<String> {
    let line = quick_start_blocks()
        .into_iter()
        .flatten()
        .find(|l| l.contains("--bin spate") && l.contains(" serve"))
        .expect("README's quick start has a `cargo run ... --bin spate -- ... serve` line");
    let command = line.split('#').next().expect("some text").trim();
    let (_, args) = command.split_once(" -- ").expect("cargo run ... -- serve ...");
    args.split_whitespace().map(str::to_string).collect()
}

/// A process stopped when dropped: SIGTERM, so a broker stops cleanly (and removes its journal
/// from /dev/shm), then SIGKILL if it has not exited within 10 s.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child process.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn readme_quick_start_works_literally_from_a_fresh_directory() {
    let workdir = temp_dir();
    let args = readme_serve_args();
    assert_eq!(args.first().map(String::as_str), Some("serve"), "{args:?}");
    let log = workdir.path().join("serve.log");
    // README's line, from a fresh working directory, with its default (relative) data dir and
    // default address.
    let serve = Process(
        Command::new(SPATE)
            .args(&args)
            .current_dir(workdir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let mut serve = serve;
    loop {
        let listed = Command::new(SPATE).args(["topic", "list"]).output().unwrap();
        if listed.status.success() {
            break;
        }
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            serve.0.try_wait().unwrap().is_none(),
            "README's `spate {}` exited; its log:\n{log_text}",
            args.join(" ")
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no broker answered on the default address; log:\n{log_text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(workdir.path().join("spate-data/.lock").is_file(), "data lands in ./spate-data");
    let log_text = std::fs::read_to_string(&log).unwrap();
    let absolute = workdir.path().join("spate-data").canonicalize().unwrap();
    assert!(
        log_text.contains(&absolute.display().to_string()),
        "the log names the data directory's absolute path: {log_text}"
    );
    assert!(!log_text.contains('\u{1b}'), "no colour codes in a log file: {log_text}");

    // README's other block, with `spate` bound to the binary under test instead of the alias.
    let blocks = quick_start_blocks();
    let usage = blocks
        .iter()
        .find(|b| b.iter().any(|l| l.starts_with("alias spate=")))
        .expect("README's quick start has a block of spate commands");
    let mut script = format!("set -e\nspate() {{ {SPATE:?} \"$@\"; }}\n");
    for line in usage.iter().filter(|l| !l.starts_with("alias ")) {
        script.push_str(line);
        script.push('\n');
    }
    let output =
        Command::new("sh").arg("-c").arg(&script).current_dir(workdir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "README's commands failed:\n{script}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for message in ["alice=hello", "bob=hi", "alice=again"] {
        assert!(stdout.contains(message), "consumed {message}: {stdout}");
    }
    // A second broker in the same directory is refused with a clear message.
    let second = Command::new(SPATE).args(&args).current_dir(workdir.path()).output().unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use by another spate process"), "{stderr}");
    drop(serve);
}

#[test]
fn relative_data_directories_work() {
    let workdir = temp_dir();
    std::fs::create_dir(workdir.path().join("inner")).unwrap();
    for (cwd, data_dir) in [(".", "data"), ("inner", "../x"), (".", "./y")] {
        let port = free_ports();
        let serve = Process(
            Command::new(SPATE)
                .args(["serve", "--data-dir", data_dir, "--cores", "2"])
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .current_dir(workdir.path().join(cwd))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let address = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while !Command::new(SPATE)
            .args(["topic", "list", "-b", &address])
            .status()
            .unwrap()
            .success()
        {
            assert!(started.elapsed() < Duration::from_secs(20), "--data-dir {data_dir} failed");
            std::thread::sleep(Duration::from_millis(100));
        }
        let created =
            Command::new(SPATE).args(["topic", "create", "t", "-b", &address]).output().unwrap();
        assert!(created.status.success());
        let expected = workdir.path().join(cwd).join(data_dir).join("t/0");
        assert!(expected.is_dir(), "{} holds the partition", expected.display());
        drop(serve);
    }
}

/// Parses `--print-offsets` output: `(partition, offset)` per line, offset -1 for a failure.
fn parse_acks(stdout: &str) -> Vec<(i64, i64)> {
    stdout
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields[..] {
                [p, o] => (p.parse().unwrap(), o.parse().unwrap()),
                [p, "-1", "error"] => (p.parse().unwrap(), -1),
                _ => panic!("bad --print-offsets line {line:?}"),
            }
        })
        .collect()
}

/// Every message of a topic as `(partition, offset) -> value`, read with `spate consume`.
fn stored(broker: &Broker, topic: &str) -> BTreeMap<(i64, i64), String> {
    let text =
        broker.ok(&["consume", topic, "--format", "%p\\t%o\\t%v\\n", "--timeout-ms", "1000"]);
    text.lines()
        .map(|line| {
            let mut fields = line.splitn(3, '\t');
            let p = fields.next().unwrap().parse().unwrap();
            let o = fields.next().unwrap().parse().unwrap();
            ((p, o), fields.next().unwrap().to_string())
        })
        .collect()
}

/// Line i of the output is input line i: acknowledged lines name where that very message is
/// stored, failed ones say so. Returns how many were acknowledged.
fn check_acks_match_input(
    acks: &[(i64, i64)],
    input: &[String],
    stored: &BTreeMap<(i64, i64), String>,
) -> usize {
    assert!(acks.len() <= input.len());
    let mut acknowledged = 0;
    for (i, (partition, offset)) in acks.iter().enumerate() {
        if *offset < 0 {
            continue;
        }
        acknowledged += 1;
        let (_, value) = input[i].split_once(':').unwrap();
        assert_eq!(
            stored.get(&(*partition, *offset)).map(String::as_str),
            Some(value),
            "output line {} says {partition}/{offset}",
            i + 1
        );
    }
    acknowledged
}

#[test]
#[ignore = "needs root to mount a tmpfs; scripts/test.sh runs ignored tests as root (CI does)"]
fn produce_into_a_full_disk_exits_with_the_error_and_keeps_what_was_acknowledged() {
    let mount = Tmpfs::mount("24m");
    let ballast = mount.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 4 << 20]).unwrap();
    let broker = Broker::start_on(&mount.path().join("data"), free_ports(), &[]);
    broker.ok(&[
        "topic",
        "create",
        "full",
        "--partitions",
        "2",
        "--config",
        "segment.bytes=4198400",
    ]);
    // About 40 MB of input into ~20 MiB of space.
    let input: Vec<String> =
        (0..40_000).map(|i| format!("k{}:{i:06}-{}", i % 5, "v".repeat(1000))).collect();
    let text: String = input.iter().map(|l| format!("{l}\n")).collect();
    let started = Instant::now();
    let output = broker.cli_with_input(
        &[
            "produce",
            "full",
            "--key-separator",
            ":",
            "--print-offsets",
            "--delivery-timeout-ms",
            "10000",
        ],
        Some(text.as_bytes()),
    );
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a full disk is an error");
    assert!(elapsed < Duration::from_secs(60), "gave up after {elapsed:?}");
    assert!(stderr.contains("DiskFull"), "the error names the full disk: {stderr}");
    assert!(stderr.contains("were acknowledged"), "says what was acknowledged: {stderr}");
    let acks = parse_acks(&String::from_utf8_lossy(&output.stdout));
    assert!(acks.iter().any(|(_, o)| *o < 0), "a failed message's line says so");
    let acknowledged = check_acks_match_input(&acks, &input, &stored(&broker, "full"));
    assert!(acknowledged > 0);

    std::fs::remove_file(&ballast).unwrap();
    let again = broker.cli_with_input(&["produce", "full", "--print-offsets"], Some(b"after\n"));
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
}

#[test]
fn print_offsets_stays_in_input_order_across_a_broker_kill() {
    let dir = temp_dir();
    let port = free_ports();
    let mut broker = Broker::start_on(dir.path(), port, &[]);
    broker.ok(&["topic", "create", "t", "--partitions", "3"]);
    let input: Vec<String> = (0..30_000).map(|i| format!("key{}:value-{i}", i % 11)).collect();
    let mut producer = Command::new(SPATE)
        .args(["produce", "t", "--key-separator", ":", "--print-offsets"])
        .args(["--delivery-timeout-ms", "15000", "-b", &broker.address()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = producer.stdin.take().unwrap();
    let feed = {
        let input = input.clone();
        // Paced so that the kill lands mid-stream; bounded by the input.
        std::thread::spawn(move || {
            for chunk in input.chunks(500) {
                let text: String = chunk.iter().map(|l| format!("{l}\n")).collect();
                if stdin.write_all(text.as_bytes()).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let stdout = producer.stdout.take().unwrap();
    let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let printed = printed.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let mut printed = printed.lock().unwrap();
                printed.push_str(&line);
                printed.push('\n');
            }
        })
    };
    // Kill once some acknowledgements are out.
    let started = Instant::now();
    while printed.lock().unwrap().lines().count() < 2_000 {
        assert!(started.elapsed() < Duration::from_secs(60), "too few acknowledgements");
        std::thread::sleep(Duration::from_millis(10));
    }
    broker.sigkill();
    std::thread::sleep(Duration::from_millis(500));
    let broker = Broker::start_on(dir.path(), port, &[]);
    feed.join().unwrap();
    // Success, or a failure after the delivery timeout: either way the output must be true.
    let status = producer.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut producer.stderr.take().unwrap(), &mut stderr).unwrap();
    reader.join().unwrap();
    let acks = parse_acks(&printed.lock().unwrap());
    let acknowledged = check_acks_match_input(&acks, &input, &stored(&broker, "t"));
    assert!(
        acknowledged > 2_000,
        "acknowledgements after the restart were checked too ({acknowledged}; {status}): {stderr}"
    );
}

#[test]
fn a_metrics_port_that_is_also_a_shard_port_is_refused_by_name() {
    let workdir = temp_dir();
    let port = free_ports();
    // Shard 0 listens on the client port + 1.
    let metrics = format!("127.0.0.1:{}", port + 1);
    let output = Command::new(SPATE)
        .args(["serve", "--data-dir", "data", "--cores", "2"])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", &metrics])
        .current_dir(workdir.path())
        .output()
        .unwrap();
    assert!(!output.status.success(), "serve must refuse the clashing metrics port");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("metrics_listen {metrics}")), "{stderr}");
    assert!(stderr.contains("client port"), "{stderr}");
}
