//! The official `openai` Python SDK as a client of a real Ladder process: a plain call, a streamed
//! call, and typed errors (see tests/python/openai_sdk_check.py). The SDK lives in `.venv`,
//! created by `scripts/setup.sh` (which the README's test command and `.ci/run` run).

mod common;

use std::process::Command;

#[tokio::test]
async fn official_openai_sdk_works_against_ladder() {
    let python = std::path::Path::new(".venv/bin/python");
    assert!(python.exists(), "the openai SDK venv is missing: run scripts/setup.sh");
    let gw = common::Gateway::start().await;
    let base_url = format!("{}/v1", gw.url);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(".venv/bin/python")
            .args(["tests/python/openai_sdk_check.py", &base_url, "mid"])
            .env("LADDER_API_KEY", common::ADMIN_KEY)
            .output()
            .expect("running python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK check failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nladder:\n{}",
        gw.ladder.logs()
    );
    assert!(
        stdout.contains("plain:") && stdout.contains("stream:") && stdout.contains("ok"),
        "{stdout}"
    );
}
