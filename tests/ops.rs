//! What an operator installs beside the binary: the systemd unit and the Prometheus alert
//! rules in `contrib/`, checked against the tools that read them and against what a running
//! daemon really exports.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tokenwarden_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_tokenwarden-under-test");

fn contrib(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib")
        .join(file)
}

fn tool(name: &str) -> Option<PathBuf> {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
}

/// The unit runs the daemon as its own user with a state directory and the hardening the
/// docs promise; `systemd-analyze verify` (where installed) finds nothing to say about it.
#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit = std::fs::read_to_string(contrib("tokenwarden.service")).unwrap();
    for line in [
        "User=tokenwarden",
        "StateDirectory=tokenwarden",
        "StateDirectoryMode=0700",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "CapabilityBoundingSet=",
        "UMask=0077",
        "KillSignal=SIGTERM",
        "ExecStart=/usr/local/bin/tokenwarden run --config /etc/tokenwarden/tokenwarden.toml",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing `{line}`");
    }
    let Some(analyze) = tool("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed: the unit was checked by its text only");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenwarden.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/tokenwarden", BIN)).unwrap();
    let out = std::process::Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    // It reports unknown or malformed keys as warnings and still exits 0: both must be quiet.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// Every metric the example alert rules use is one a running daemon exports from its
/// start (before any run), with the labels the rules use; `promtool` (where installed)
/// accepts the rules.
#[tokio::test]
async fn the_alert_rules_use_metrics_the_daemon_exports() {
    let rules = std::fs::read_to_string(contrib("prometheus-alerts.yml")).unwrap();
    let emu = start_emulator().await;
    let f = Fixture::new().await;
    let cfg = f.dir.path().join("tokenwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\npath = \"data/tw.db\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{}",
            job_toml("graph", &emu.authority(), TENANT_ID, ACCESS_TOKEN)
        ),
    )
    .unwrap();
    let d = DaemonProc::spawn(BIN, &cfg, &[]).await;
    let metrics = d.get("/metrics").await.body;
    let mut used = Vec::new();
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("tokenwarden_") && !used.contains(&word) {
            used.push(word);
        }
    }
    assert!(used.len() >= 4, "{used:?}");
    for metric in used {
        assert!(
            metrics.lines().any(|l| l.starts_with(metric)),
            "the rules use {metric}, which the daemon does not export:\n{metrics}"
        );
    }
    assert!(metrics.contains("job_name=\"graph\""));
    // The plan of each job is in the start-up log, with its reason.
    assert!(
        d.log().contains("job planned") && d.log().contains("catch-up"),
        "{}",
        d.log()
    );
    // The first run of a job without a token was due when the daemon started, not in 1970.
    eventually(Duration::from_secs(10), "the first run", || async {
        d.get("/jobs/graph").await.json()["last_run"].is_object()
    })
    .await;
    let lateness = d.get("/jobs/graph").await.json()["last_run"]["lateness_ms"].as_u64();
    assert!(lateness.is_some_and(|l| l < 10_000), "{lateness:?}");

    let Some(promtool) = tool("promtool") else {
        eprintln!("promtool is not installed: the rules were checked against the metrics only");
        return;
    };
    let out = std::process::Command::new(promtool)
        .args(["check", "rules"])
        .arg(contrib("prometheus-alerts.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
