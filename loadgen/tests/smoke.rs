//! `--embedded` smoke runs of every scenario through the real binary (small counts, seconds):
//! the JSON has the agreed keys, every produced message was acknowledged, and for e2e consumed.

use std::path::Path;
use std::process::Command;

const LOADGEN: &str = env!("CARGO_BIN_EXE_spate-loadgen");

fn run_json(args: &[&str], json: &Path) -> serde_json::Value {
    let output = Command::new(LOADGEN)
        .args(args)
        .arg("--json")
        .arg(json)
        .output()
        .expect("run spate-loadgen");
    assert!(
        output.status.success(),
        "spate-loadgen {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

fn assert_keys(value: &serde_json::Value) {
    for key in [
        "scenario",
        "messages",
        "bytes",
        "duration_s",
        "msgs_per_sec",
        "mb_per_sec",
        "errors",
        "latency_us",
        "config",
        "machine",
    ] {
        assert!(value.get(key).is_some(), "missing {key} in {value}");
    }
    for key in ["p50", "p90", "p99", "p999", "p9999", "max"] {
        assert!(value["latency_us"].get(key).is_some(), "missing latency_us.{key}");
    }
    for key in ["cores", "cpu_model", "kernel", "data_dir_filesystem"] {
        assert!(value["machine"].get(key).is_some(), "missing machine.{key}");
    }
}

fn temp() -> tempfile::TempDir {
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new().prefix("spate-loadgen-test-").tempdir_in(base).unwrap()
}

#[test]
fn every_scenario_runs_embedded_and_reports() {
    let dir = temp();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let json = dir.path().join("out.json");
    let hdr = dir.path().join("out.hdr");

    // Produce a fixed count: every message acknowledged, no errors.
    let produce = run_json(
        &[
            "produce",
            "--embedded",
            "--data-dir",
            data,
            "--messages",
            "3000",
            "--partitions",
            "2",
            "--keys",
            "uniform:50",
            "--message-size",
            "100..300",
            "--no-ceiling",
            "--hdr",
            hdr.to_str().unwrap(),
        ],
        &json,
    );
    assert_keys(&produce);
    assert_eq!(produce["scenario"], "produce");
    assert_eq!(produce["messages"], 3000);
    assert_eq!(produce["errors"], 0);
    assert!(produce["latency_us"]["p50"].as_u64().unwrap() > 0);
    assert!(std::fs::read_to_string(&hdr).unwrap().contains("Total count = 3000"));

    // Consume reads back exactly what is there (the same data directory, a new embedded broker).
    let consume = run_json(
        &[
            "consume",
            "--embedded",
            "--data-dir",
            data,
            "--partitions",
            "2",
            "--consumers",
            "2",
            "--no-ceiling",
        ],
        &json,
    );
    assert_keys(&consume);
    assert_eq!(consume["messages"], 3000);
    assert_eq!(consume["errors"], 0);

    // e2e at a fixed rate: everything produced is consumed.
    let e2e = run_json(
        &[
            "e2e",
            "--embedded",
            "--data-dir",
            data,
            "--topic",
            "e2e",
            "--messages",
            "2000",
            "--rate",
            "4000",
            "--no-ceiling",
        ],
        &json,
    );
    assert_keys(&e2e);
    assert_eq!(e2e["produced"], 2000);
    assert_eq!(e2e["messages"], 2000);
    assert!(e2e["e2e_latency_us"]["p99"].as_u64().unwrap() > 0);
}

#[test]
fn ceiling_reports_its_keys() {
    let dir = temp();
    let json = dir.path().join("ceiling.json");
    let output = Command::new(LOADGEN)
        .args(["ceiling", "--data-dir"])
        .arg(dir.path())
        .args(["--direct-mb", "16", "--fsync-writes", "20", "--tcp-mb", "32", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in [
        "direct_write_mb_per_sec",
        "direct_read_mb_per_sec",
        "fdatasync_write_mb_per_sec",
        "loopback_tcp_mb_per_sec",
    ] {
        assert!(value[key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert!(value["fdatasync_latency_us"]["p50"].as_u64().unwrap() > 0);
    assert!(value["fdatasync_latency_us"].get("p99").is_some());
}

#[test]
fn a_partition_sweep_runs_each_count_and_reports_the_curve() {
    let dir = temp();
    let json = dir.path().join("sweep.json");
    let data = dir.path().join("data");
    let value = run_json(
        &[
            "produce",
            "--embedded",
            "--data-dir",
            data.to_str().unwrap(),
            "--sweep-partitions",
            "1,4",
            "--messages",
            "500",
            "--keys",
            "uniform:100",
            "--message-size",
            "200",
            "--no-ceiling",
        ],
        &json,
    );
    let steps = value["steps"].as_array().expect("one entry per count");
    assert_eq!(steps.len(), 2);
    for (step, partitions) in steps.iter().zip([1, 4]) {
        assert_eq!(step["partitions"], partitions);
        assert_eq!(step["errors"], 0);
        assert!(step["msgs_per_sec"].as_f64().unwrap() > 0.0, "{step}");
    }
}
