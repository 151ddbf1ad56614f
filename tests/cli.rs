//! The `tokenwarden` command as a script uses it: real processes, real config files, real
//! stores, the emulator on 127.0.0.1. Exit codes and output are part of the contract.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;
use tokenwarden::emulator::{self, Fault};
use tokenwarden_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_tokenwarden-under-test");

struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    /// A folder with a config for `authority`, and a store with the demo credentials.
    async fn new(authority: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenwarden.toml"), config(authority)).unwrap();
        let cli = Self { dir };
        let store = tokenwarden::SqliteStore::open(&cli.store_path()).unwrap();
        seed_client_secrets(&store).await;
        cli
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("tokenwarden.toml")
    }

    fn store_path(&self) -> PathBuf {
        self.dir.path().join("data/tw.db")
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_remove("TOKENWARDEN_CONFIG")
            .env_remove("TOKENWARDEN_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).await.unwrap();
        }
        drop(input);
        child.wait_with_output().await.unwrap()
    }
}

fn config(authority: &str) -> String {
    format!(
        r#"[store]
path = "data/tw.db"

[[jobs]]
name = "graph"
scope = "{SCOPE}"
authority = "{authority}"
[jobs.secrets]
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
tenant_id = "{TENANT_ID}"
access_token = "{ACCESS_TOKEN}"
"#
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

fn assert_no_secret(o: &Output) {
    for s in [&o.stdout, &o.stderr] {
        assert!(
            !text(s).contains(emulator::DEMO_CLIENT_SECRET),
            "{}",
            text(s)
        );
    }
}

#[tokio::test]
async fn secrets_set_get_list_round_trip_through_stdin() {
    let cli = Cli::new("http://127.0.0.1:9").await;
    let o = cli
        .run(
            &["secrets", "set", "Api Key"],
            Some("  value with spaces\n"),
        )
        .await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(o.stdout.is_empty());

    // Piped: the exact value, no newline added, leading spaces kept.
    let o = cli.run(&["secrets", "get", "Api Key"], None).await;
    assert_eq!(code(&o), 0);
    assert_eq!(text(&o.stdout), "  value with spaces");

    let o = cli.run(&["secrets", "list"], None).await;
    assert_eq!(code(&o), 0);
    let out = text(&o.stdout);
    assert!(out.starts_with("NAME"), "{out}");
    for name in ["Api Key", CLIENT_ID, CLIENT_SECRET, TENANT_ID] {
        assert!(out.contains(name), "{out}");
    }
    assert!(!out.contains("value with spaces") && !out.contains(emulator::DEMO_CLIENT_SECRET));

    let o = cli.run(&["secrets", "list", "--json"], None).await;
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 4);
    assert!(list[0].get("value").is_none());
}

#[tokio::test]
async fn secrets_errors_have_distinct_exit_codes() {
    let cli = Cli::new("http://127.0.0.1:9").await;
    let o = cli.run(&["secrets", "get", "Nope"], None).await;
    assert_eq!(code(&o), 5);
    assert!(text(&o.stderr).contains("no secret named `Nope`"));
    let o = cli.run(&["secrets", "set", "Empty"], Some("\n")).await;
    assert_eq!(code(&o), 2);
    let o = cli.run(&["secrets", "get", "Empty"], None).await;
    assert_eq!(code(&o), 5, "an empty value must not have been stored");
    let o = cli.run(&["secrets", "frobnicate"], None).await;
    assert_eq!(code(&o), 2);
    // The value never comes from argv: there is no argument for it.
    let o = cli.run(&["secrets", "set", "X", "value"], None).await;
    assert_eq!(code(&o), 2);
}

#[tokio::test]
async fn refresh_succeeds_with_config_given_any_way() {
    let emu = start_emulator().await;
    let cli = Cli::new(&emu.authority()).await;
    let cfg = cli.config_path();
    let cfg = cfg.to_str().unwrap();

    // Default ./tokenwarden.toml, --config before and after the subcommand.
    for args in [
        vec!["refresh", "graph"],
        vec!["--config", cfg, "refresh", "graph"],
        vec!["refresh", "graph", "--config", cfg],
    ] {
        let o = cli.run(&args, None).await;
        assert_eq!(code(&o), 0, "{args:?}: {}", text(&o.stderr));
        let out = text(&o.stdout);
        assert!(
            out.starts_with(
                "refreshed `graph`: Bearer token stored in `Microsoft Access Token`, expires in 59m"
            ),
            "{out}"
        );
        assert_no_secret(&o);
    }
    assert_eq!(emu.state.stats().tokens_issued, 3);

    // $TOKENWARDEN_CONFIG, run from another folder.
    let o = tokio::process::Command::new(BIN)
        .args(["refresh", "graph", "--json"])
        .current_dir(std::env::temp_dir())
        .env("TOKENWARDEN_CONFIG", cli.config_path())
        .output()
        .await
        .unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["outcome"]["expires_in"], 3599);
    assert_eq!(v["token_secret"], ACCESS_TOKEN);
    assert!(
        v["duration_ms"].is_u64(),
        "the same field name as the admin API: {v}"
    );

    // The stored token is what the resource server accepts.
    let token = cli
        .run(&["secrets", "get", ACCESS_TOKEN], None)
        .await
        .stdout;
    assert_eq!(
        get_with_bearer(emu.addr, "/v1.0/me", &text(&token)).await,
        200
    );
}

#[tokio::test]
async fn failed_refresh_exits_non_zero_names_the_error_and_keeps_the_token() {
    let emu = start_emulator().await;
    let cli = Cli::new(&emu.authority()).await;
    assert_eq!(code(&cli.run(&["refresh", "graph"], None).await), 0);
    let good = cli
        .run(&["secrets", "get", ACCESS_TOKEN], None)
        .await
        .stdout;

    // Permanent: a wrong client secret.
    cli.run(
        &["secrets", "set", CLIENT_SECRET],
        Some("wrong-secret-canary"),
    )
    .await;
    let o = cli.run(&["refresh", "graph"], None).await;
    assert_eq!(code(&o), 4);
    let err = text(&o.stderr);
    assert!(
        err.contains("invalid_client") && err.contains("AADSTS7000215"),
        "{err}"
    );
    assert!(
        err.contains("trace_id") && err.contains("correlation_id"),
        "{err}"
    );
    assert!(!err.contains("wrong-secret-canary"), "{err}");
    let o = cli.run(&["refresh", "graph", "--json"], None).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["class"], "rejected");
    assert_eq!(v["error"]["retry"], "permanent");
    assert_eq!(v["error"]["oauth"]["error_codes"][0], 7000215);
    assert!(!text(&o.stdout).contains("wrong-secret-canary"));

    // Retryable: the provider is down.
    cli.run(
        &["secrets", "set", CLIENT_SECRET],
        Some(emulator::DEMO_CLIENT_SECRET),
    )
    .await;
    emu.state.push_faults([
        Fault::Status { status: 503 },
        Fault::Throttle {
            retry_after: Some(3),
        },
    ]);
    let o = cli.run(&["refresh", "graph"], None).await;
    assert_eq!(code(&o), 3, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("HTTP 503"));
    let o = cli.run(&["refresh", "graph"], None).await;
    assert_eq!(code(&o), 3);
    assert!(
        text(&o.stderr).contains("Retry-After 3s"),
        "{}",
        text(&o.stderr)
    );

    let kept = cli
        .run(&["secrets", "get", ACCESS_TOKEN], None)
        .await
        .stdout;
    assert_eq!(kept, good);
}

#[tokio::test]
async fn config_errors_name_file_line_and_key() {
    let cli = Cli::new("http://127.0.0.1:9").await;
    let path = cli.config_path();
    let bad = config("http://127.0.0.1:9").replace("scope =", "scopes =");
    std::fs::write(&path, bad).unwrap();
    let o = cli.run(&["refresh", "graph"], None).await;
    assert_eq!(code(&o), 2);
    let err = text(&o.stderr);
    assert!(
        err.contains("tokenwarden.toml") && err.contains("line 6") && err.contains("scopes"),
        "{err}"
    );

    std::fs::write(&path, config("http://127.0.0.1:9")).unwrap();
    let o = cli.run(&["refresh", "nope"], None).await;
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("no job named `nope`") && text(&o.stderr).contains("graph"));

    let o = cli
        .run(
            &["--config", "/nonexistent/tw.toml", "secrets", "list"],
            None,
        )
        .await;
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("/nonexistent/tw.toml"));
}

#[tokio::test]
async fn exported_component_runs_as_a_job_plugin() {
    let emu = start_emulator().await;
    let cli = Cli::new(&emu.authority()).await;
    let o = cli
        .run(&["component", "export", "exported.wasm"], None)
        .await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let bytes = std::fs::read(cli.dir.path().join("exported.wasm")).unwrap();
    assert_eq!(&bytes[..4], b"\0asm");
    assert_eq!(bytes.as_slice(), tokenwarden::BUILTIN_COMPONENT);

    let mut cfg = config(&emu.authority());
    cfg = cfg.replace(
        "[jobs.secrets]",
        "plugin = \"exported.wasm\"\n[jobs.secrets]",
    );
    std::fs::write(cli.config_path(), cfg).unwrap();
    let o = cli.run(&["refresh", "graph"], None).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));

    std::fs::write(cli.dir.path().join("exported.wasm"), b"not wasm").unwrap();
    let o = cli.run(&["refresh", "graph"], None).await;
    assert_ne!(code(&o), 0);
    assert!(
        text(&o.stderr).contains("exported.wasm"),
        "{}",
        text(&o.stderr)
    );
}

#[tokio::test]
async fn emulator_command_serves_tokens_to_refresh() {
    let mut emu = tokio::process::Command::new(BIN)
        .args([
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--lifetime",
            "90s",
            "--fault",
            "503",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(emu.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    let addr = line.strip_prefix("listening on ").expect(&line).to_string();

    let cli = Cli::new(&format!("http://{addr}")).await;
    let o = cli.run(&["refresh", "graph"], None).await;
    assert_eq!(code(&o), 3, "the first request gets the injected 503");
    let o = cli.run(&["refresh", "graph", "--json"], None).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["outcome"]["expires_in"], 90);
    emu.kill().await.unwrap();
}

#[tokio::test]
async fn demo_runs_offline_and_tells_the_story() {
    let cli = Cli::new("http://127.0.0.1:9").await;
    let o = cli.run(&["demo"], None).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let out = text(&o.stdout);
    for needle in [
        "catch-up  ok",
        "schedule  ok",
        "FAILED  token endpoint server error (HTTP 503), retryable; last good token kept",
        "temporarily_unavailable (HTTP 503, AADSTS90006), retryable",
        "throttled (HTTP 429), Retry-After 1s",
        "manual    ok",
        "HTTP 200, ok=true (the same call without the bearer token: HTTP 401)",
        "invalid_client (HTTP 401, AADSTS7000215), permanent",
        "the stored token was valid and accepted after every failure: yes",
        "GET /readyz: HTTP 200",
        "(json, mode 0600): Bearer token",
        "GET /v1.0/me with the sink's token: HTTP 200",
        "GET /tokens/graph on ",
        "/graph/me: HTTP 200 (the proxy added the token)",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    assert!(!out.contains("NO"), "{out}");
    assert_no_secret(&o);
}

#[test]
fn help_lists_the_contract_commands() {
    let o = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let help = text(&o.stdout);
    for cmd in [
        "init",
        "config",
        "status",
        "secrets",
        "refresh",
        "run",
        "token",
        "exec",
        "emulator",
        "demo",
        "component",
        "completions",
        "man",
    ] {
        assert!(help.contains(cmd), "{help}");
    }
    // `--help` says which environment variables act and what each exit code means.
    for needle in [
        "TOKENWARDEN_STORE_KEY",
        "TOKENWARDEN_STORE_PASSWORD",
        "Exit codes",
        "needs a human",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    let _ = Path::new(BIN);
}

#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    for shell in ["bash", "zsh", "fish"] {
        let o = std::process::Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{shell}");
        let out = text(&o.stdout);
        assert!(
            out.contains("tokenwarden") && out.contains("rotate-key"),
            "{shell}: {out}"
        );
    }
    let o = std::process::Command::new(BIN).arg("man").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let page = text(&o.stdout);
    assert!(
        page.contains(".TH tokenwarden") && page.contains("refresh"),
        "{page}"
    );
}

/// The README's local walk-through: `init --emulator`, the emulator's banner, the three
/// secrets, `config check`, `refresh`, `status`; and `init` never overwrites a file.
#[tokio::test]
async fn the_local_walk_through_works_from_an_empty_folder() {
    let dir = tempfile::tempdir().unwrap();
    let run = async |args: &[&str], stdin: Option<&str>| {
        let mut child = tokio::process::Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env_remove("TOKENWARDEN_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input
            .write_all(stdin.unwrap_or("").as_bytes())
            .await
            .unwrap();
        drop(input);
        child.wait_with_output().await.unwrap()
    };
    // Before there is a config, commands say how to get one.
    let o = run(&["secrets", "list"], None).await;
    assert_eq!(code(&o), 2);
    assert!(
        text(&o.stderr).contains("tokenwarden init"),
        "{}",
        text(&o.stderr)
    );

    let o = run(&["init", "--emulator"], None).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("tokenwarden emulator"),
        "{}",
        text(&o.stderr)
    );
    let written = std::fs::read_to_string(dir.path().join("tokenwarden.toml")).unwrap();
    let again = run(&["init"], None).await;
    assert_eq!(code(&again), 2);
    assert!(text(&again.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("tokenwarden.toml")).unwrap(),
        written
    );

    // The emulator on a free port (the config's default port is rewritten to it); its
    // banner gives the tenant, client id, secret and a job for it.
    let mut emu = tokio::process::Command::new(BIN)
        .args(["emulator", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(emu.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("secrets set 'Microsoft Tenant ID'") {
            break;
        }
    }
    for needle in [
        emulator::DEMO_TENANT,
        emulator::DEMO_CLIENT_ID,
        emulator::DEMO_CLIENT_SECRET,
        "[[jobs]]",
        "tokenwarden secrets set",
    ] {
        assert!(banner.contains(needle), "{needle}: {banner}");
    }
    let addr = banner
        .lines()
        .next()
        .unwrap()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    std::fs::write(
        dir.path().join("tokenwarden.toml"),
        written.replace("127.0.0.1:8421", &addr),
    )
    .unwrap();

    let check = run(&["config", "check"], None).await;
    assert_eq!(code(&check), 0, "{}", text(&check.stderr));
    let out = text(&check.stdout);
    assert!(
        out.contains("NOT SET") && out.contains("tokenwarden secrets set 'Microsoft Client ID'"),
        "{out}"
    );
    for (name, value) in [
        ("Microsoft Client ID", emulator::DEMO_CLIENT_ID),
        ("Microsoft Client Secret", emulator::DEMO_CLIENT_SECRET),
        ("Microsoft Tenant ID", emulator::DEMO_TENANT),
    ] {
        assert_eq!(code(&run(&["secrets", "set", name], Some(value)).await), 0);
    }
    let check = run(&["config", "check", "--json"], None).await;
    let v: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    let job = &v["jobs"][0];
    assert_eq!(
        job["token_endpoint"],
        format!("http://{addr}/{{tenant}}/oauth2/v2.0/token")
    );
    assert_eq!(job["secrets"][1]["name"], "Microsoft Client Secret");
    assert_eq!(job["secrets"][1]["set"], true);
    // Which WASI each job runs in, and a bad engine-wide choice is a usage error (exit 2).
    assert_eq!(job["wasi"], tokenwarden_tests::wasi().as_str());
    for bad in ["0.4", " "] {
        let o = tokio::process::Command::new(BIN)
            .args(["config", "check"])
            .current_dir(dir.path())
            .env_remove("TOKENWARDEN_CONFIG")
            .env("TOKENWARDEN_WASI", bad)
            .output()
            .await
            .unwrap();
        assert_eq!(code(&o), 2, "{}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("TOKENWARDEN_WASI"),
            "{}",
            text(&o.stderr)
        );
    }

    let o = run(&["refresh", "graph"], None).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let status = run(&["status"], None).await;
    assert_eq!(code(&status), 0);
    let out = text(&status.stdout);
    assert!(
        out.contains("valid, expires in") && out.contains("manual") && out.contains("next run"),
        "{out}"
    );
    let status = run(&["status", "--json"], None).await;
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v[0]["last_run"]["ok"], true);
    assert!(v[0]["token_expires_in_seconds"].as_i64().unwrap() > 3000);
    emu.kill().await.unwrap();
}

#[tokio::test]
async fn secrets_delete_refuses_a_bound_name_unless_forced() {
    let cli = Cli::new("http://127.0.0.1:9").await;
    let o = cli.run(&["secrets", "delete", CLIENT_SECRET], None).await;
    assert_eq!(code(&o), 2);
    assert!(
        text(&o.stderr).contains("job `graph` reads it"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(
        code(&cli.run(&["secrets", "get", CLIENT_SECRET], None).await),
        0
    );
    let o = cli
        .run(&["secrets", "delete", CLIENT_SECRET, "--force"], None)
        .await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(
        code(&cli.run(&["secrets", "get", CLIENT_SECRET], None).await),
        5
    );
    assert_eq!(
        code(&cli.run(&["secrets", "delete", "Never There"], None).await),
        5
    );
}

/// Errors say the cause in words, once, and in JSON under `--log-format json`.
#[tokio::test]
async fn errors_are_plain_words_and_json_when_asked() {
    // Nothing listens on port 1: the OS's words, not a `Debug` dump.
    let cli = Cli::new("http://127.0.0.1:1").await;
    let o = cli.run(&["refresh", "graph"], None).await;
    assert_eq!(code(&o), 3);
    let err = text(&o.stderr);
    assert!(err.contains("cannot connect: connection refused"), "{err}");
    assert!(!err.contains("Os {") && !err.contains("kind:"), "{err}");
    // A missing secret names the store name and the command that sets it.
    let o = cli
        .run(&["secrets", "delete", CLIENT_ID, "--force"], None)
        .await;
    assert_eq!(code(&o), 0);
    let o = cli.run(&["refresh", "graph"], None).await;
    assert_eq!(code(&o), 4);
    assert!(
        text(&o.stderr).contains(&format!("`tokenwarden secrets set '{CLIENT_ID}'`")),
        "{}",
        text(&o.stderr)
    );
    // Under --log-format json the final error is JSON too.
    let o = cli
        .run(&["--log-format", "json", "refresh", "nope"], None)
        .await;
    assert_eq!(code(&o), 2);
    let last = text(&o.stderr).lines().last().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap_or_else(|_| panic!("{last}"));
    assert_eq!(v["exit_code"], 2);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("no job named `nope`")
    );
}

/// Starts `tokenwarden run` in the CLI fixture's folder.
fn spawn_daemon(cli: &Cli, extra_config: &str) -> tokio::process::Child {
    let cfg = std::fs::read_to_string(cli.config_path()).unwrap();
    std::fs::write(cli.config_path(), format!("{extra_config}\n{cfg}")).unwrap();
    tokio::process::Command::new(BIN)
        .arg("run")
        .current_dir(cli.dir.path())
        .env_remove("TOKENWARDEN_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(ok.success());
}

async fn wait_for_requests(emu: &tokenwarden::emulator::Emulator, n: u64) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while emu.state.stats().token_requests < n {
        assert!(
            std::time::Instant::now() < until,
            "no token request arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_mid_run_lets_the_run_finish_and_exits_zero() {
    let emu = start_emulator_with(emulator::EmulatorConfig {
        latency: std::time::Duration::from_millis(1500),
        ..Default::default()
    })
    .await;
    let cli = Cli::new(&emu.authority()).await;
    let mut child = spawn_daemon(
        &cli,
        "[admin]\nlisten = \"127.0.0.1:0\"\n[daemon]\nshutdown_grace = \"10s\"",
    );
    wait_for_requests(&emu, 1).await;
    sigterm(&child);
    let status = tokio::time::timeout(std::time::Duration::from_secs(15), child.wait())
        .await
        .expect("stopped within the grace period")
        .unwrap();
    let mut err = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        err.contains("token refreshed"),
        "the run in flight finished: {err}"
    );
    assert!(err.contains("all_runs_finished=true"), "{err}");
    assert!(!err.contains(emulator::DEMO_CLIENT_SECRET));
    // The store opens and holds a complete token the server accepts.
    let token = cli.run(&["secrets", "get", ACCESS_TOKEN], None).await;
    assert_eq!(code(&token), 0);
    assert_eq!(
        get_with_bearer(emu.addr, "/v1.0/me", &text(&token.stdout)).await,
        200
    );
}

#[tokio::test]
async fn sigterm_past_the_grace_period_cuts_the_run_off_cleanly() {
    let emu = start_emulator_with(emulator::EmulatorConfig {
        latency: std::time::Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let cli = Cli::new(&emu.authority()).await;
    {
        use tokenwarden::SecretStore;
        // An expired token, so the daemon catches up at once.
        tokenwarden::SqliteStore::open(&cli.store_path())
            .unwrap()
            .set(
                ACCESS_TOKEN,
                &secrecy::SecretString::from("previous-token".to_string()),
                Some(1),
            )
            .await
            .unwrap();
    }
    let mut child = spawn_daemon(
        &cli,
        "[admin]\nlisten = \"127.0.0.1:0\"\n[daemon]\nshutdown_grace = \"200ms\"",
    );
    wait_for_requests(&emu, 1).await;
    sigterm(&child);
    let status = tokio::time::timeout(std::time::Duration::from_secs(4), child.wait())
        .await
        .expect("stopped soon after the grace period")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let list = cli.run(&["secrets", "list"], None).await;
    assert_eq!(code(&list), 0, "the store opens");
    let token = cli.run(&["secrets", "get", ACCESS_TOKEN], None).await;
    assert_eq!(
        text(&token.stdout),
        "previous-token",
        "the cut-off run wrote nothing"
    );
}

#[tokio::test]
async fn run_refuses_an_unauthenticated_admin_api_off_loopback() {
    let cli = Cli::new("http://127.0.0.1:9").await;
    let mut child = spawn_daemon(&cli, "[admin]\nlisten = \"0.0.0.0:0\"");
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(2));
    let mut err = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert!(err.contains("token_secret"), "{err}");
}

/// The emulator over TLS with a certificate for 127.0.0.1 that a private CA signed; the CA's
/// PEM.
async fn private_ca_emulator() -> (emulator::EmulatorState, std::net::SocketAddr, String) {
    let pki = loopback_cert();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pki.key_der.into());
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(pki.chain, key)
    .unwrap();
    // A client that does not trust the CA ends its handshake; the listener takes the next.
    let listener = TlsListener::bind(config).await;
    let addr = listener.tcp.local_addr().unwrap();
    let state = emulator::EmulatorState::new(emulator::EmulatorConfig::default());
    let app = emulator::router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (state, addr, pki.ca_pem)
}

/// An identity provider whose certificate a private CA signed: refused with the web PKI
/// roots (and with the system's), trusted with `[tls] ca_file`; a CA file that is missing or
/// holds no certificate fails when the config loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_trusted_only_when_configured() {
    let (state, addr, ca_pem) = private_ca_emulator().await;
    let cli = Cli::new(&format!("https://127.0.0.1:{}", addr.port())).await;
    std::fs::write(cli.dir.path().join("ca.pem"), &ca_pem).unwrap();
    let base = std::fs::read_to_string(cli.config_path()).unwrap();
    let with_tls = |tls: &str| std::fs::write(cli.config_path(), format!("{tls}\n{base}")).unwrap();

    for tls in ["", "[tls]\nroots = \"system\"", "[tls]\nroots = \"both\""] {
        with_tls(tls);
        let o = cli.run(&["refresh", "graph"], None).await;
        assert_ne!(code(&o), 0, "{tls}");
        assert!(
            text(&o.stderr).contains("unknown authority"),
            "{tls}: {}",
            text(&o.stderr)
        );
    }
    assert_eq!(state.stats().tokens_issued, 0);

    for tls in [
        "[tls]\nca_file = \"ca.pem\"",
        "[tls]\nroots = \"both\"\nca_file = \"ca.pem\"",
    ] {
        with_tls(tls);
        let o = cli.run(&["refresh", "graph"], None).await;
        assert_eq!(code(&o), 0, "{tls}: {}", text(&o.stderr));
        use tokenwarden::SecretStore as _;
        let token = tokenwarden::SqliteStore::open(&cli.store_path())
            .unwrap()
            .get(ACCESS_TOKEN)
            .await
            .unwrap()
            .unwrap();
        use secrecy::ExposeSecret;
        assert!(state.accepts(token.value.expose_secret()));
    }

    std::fs::write(cli.dir.path().join("empty.pem"), "").unwrap();
    for (tls, why) in [
        ("[tls]\nca_file = \"missing.pem\"", "missing.pem"),
        ("[tls]\nca_file = \"empty.pem\"", "no `BEGIN CERTIFICATE`"),
        ("[tls]\nroots = \"mozilla\"", "webpki, system, both"),
    ] {
        with_tls(tls);
        let o = cli.run(&["config", "check"], None).await;
        assert_ne!(code(&o), 0, "{tls}");
        assert!(text(&o.stderr).contains(why), "{tls}: {}", text(&o.stderr));
    }
}

/// tinyproxy, a real HTTP proxy, on loopback, asking for Basic credentials `tw:s3cret`.
struct Tinyproxy {
    _child: tokio::process::Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    async fn start() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let bin = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("tinyproxy is installed (.ci/run installs it: apt-get install tinyproxy)");
        let dir = tempfile::tempdir().unwrap();
        // tinyproxy started as root runs as nobody, which must write its log here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.path().join("tinyproxy.log");
        let user = if is_root() {
            "User nobody\nGroup nogroup\n"
        } else {
            ""
        };
        let conf = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "{user}Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Info\nMaxClients 20\nAllow 127.0.0.1\nBasicAuth tw s3cret\n",
                log.display()
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new(bin)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        eventually(Duration::from_secs(10), "tinyproxy listens", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        Self {
            _child: child,
            port,
            log,
            _dir: dir,
        }
    }

    /// The tunnels it opened to `target`.
    fn tunnels_to(&self, target: std::net::SocketAddr) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches(&format!("CONNECT {target}"))
            .count()
    }
}

/// Through a corporate proxy (tinyproxy, with Basic credentials from the store): the run
/// reaches the identity provider through a CONNECT tunnel, with TLS to the provider inside
/// it; wrong credentials, a proxy that is down and `no_proxy` behave as the operator expects,
/// and the credentials appear in no output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_proxy_tunnels_the_run_to_the_identity_provider() {
    let (state, addr, ca_pem) = private_ca_emulator().await;
    let proxy = Tinyproxy::start().await;
    let cli = Cli::new(&format!("https://127.0.0.1:{}", addr.port())).await;
    std::fs::write(cli.dir.path().join("ca.pem"), &ca_pem).unwrap();
    let base = std::fs::read_to_string(cli.config_path()).unwrap();
    let with = |egress: &str| {
        std::fs::write(
            cli.config_path(),
            format!("[tls]\nca_file = \"ca.pem\"\n{egress}\n{base}"),
        )
        .unwrap()
    };
    let egress = format!(
        "[egress]\nproxy = \"http://127.0.0.1:{}\"\nproxy_credentials = \"Proxy Login\"",
        proxy.port
    );
    let set_login = async |value: &str| {
        let o = cli
            .run(&["secrets", "set", "Proxy Login"], Some(value))
            .await;
        assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    };

    set_login("tw:s3cret").await;
    with(&egress);
    let o = cli.run(&["refresh", "graph"], None).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(proxy.tunnels_to(addr), 1, "the run went through the proxy");
    assert_eq!(state.stats().tokens_issued, 1);

    // Refused credentials: the run fails saying so, without the password.
    set_login("tw:wrong-password").await;
    let o = cli.run(&["refresh", "graph"], None).await;
    assert_ne!(code(&o), 0);
    let err = text(&o.stderr);
    assert!(
        err.contains("refused them") && err.contains("egress proxy"),
        "{err}"
    );
    assert!(!err.contains("wrong-password") && !text(&o.stdout).contains("wrong-password"));
    assert_eq!(state.stats().tokens_issued, 1);

    // no_proxy names the provider: reached directly.
    with(&format!("{egress}\nno_proxy = [\"127.0.0.1\"]"));
    let o = cli.run(&["refresh", "graph"], None).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(state.stats().tokens_issued, 2);

    // proxy = "env": $HTTPS_PROXY names it.
    set_login("tw:s3cret").await;
    with("[egress]\nproxy = \"env\"\nproxy_credentials = \"Proxy Login\"");
    let o = tokio::process::Command::new(BIN)
        .args(["refresh", "graph"])
        .current_dir(cli.dir.path())
        .env_remove("TOKENWARDEN_CONFIG")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env("HTTPS_PROXY", format!("127.0.0.1:{}", proxy.port))
        .output()
        .await
        .unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(
        proxy.tunnels_to(addr),
        3,
        "one refused, one through $HTTPS_PROXY"
    );
    assert_eq!(state.stats().tokens_issued, 3);

    // A proxy that is down: the run fails naming it.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    with(&format!("[egress]\nproxy = \"http://127.0.0.1:{down}\""));
    let o = cli.run(&["refresh", "graph"], None).await;
    assert_ne!(code(&o), 0);
    assert!(
        text(&o.stderr).contains(&format!("egress proxy 127.0.0.1:{down}")),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(state.stats().tokens_issued, 3);
}
