//! Headless Chromium driven over the DevTools protocol: open a page, evaluate JavaScript in
//! it, take a screenshot. Real time passes between calls (unlike `--dump-dom` with a virtual
//! time budget), so a page that samples an API on a timer behaves as it does for a person.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tally_testkit::wait_for;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// Chromium from `TALLY_CHROMIUM` or PATH; a loud failure when missing.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("TALLY_CHROMIUM") {
        return p.into();
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
        .expect("chromium is not installed: apt-get install -y chromium (scripts/test.sh does), or set TALLY_CHROMIUM")
}

impl Browser {
    /// Starts headless Chromium with a fresh profile on `url`, `width`x`height` pixels.
    pub fn open(url: &str, width: u32, height: u32) -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("tally-chromium-")
            .tempdir()
            .unwrap();
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        // The flags that keep Chromium from reaching out to the network it does not have.
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start chromium");
        let port = wait_for("chromium's DevTools port", Duration::from_secs(30), || {
            let text = std::fs::read_to_string(profile.path().join("DevToolsActivePort")).ok()?;
            text.lines().next()?.trim().parse::<u16>().ok()
        });
        let client = tally_testkit::client::http();
        let ws_url = wait_for("the page target", Duration::from_secs(30), || {
            let targets: Value = client
                .get(format!("http://127.0.0.1:{port}/json/list"))
                .send()
                .ok()?
                .json()
                .ok()?;
            targets.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                .as_str()
                .map(str::to_owned)
        });
        let (ws, _) = tungstenite::connect(ws_url).expect("cannot connect to chromium");
        Browser {
            child,
            ws,
            next_id: 0,
            _profile: profile,
        }
    }

    /// One DevTools command; returns its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws
            .send(Message::Text(msg.to_string()))
            .expect("devtools send");
        loop {
            let Message::Text(text) = self.ws.read().expect("devtools read") else {
                continue;
            };
            let v: Value = serde_json::from_str(&text).expect("devtools json");
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method} failed: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page; returns its JSON value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("page script failed: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Saves a PNG of the viewport.
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        std::fs::write(path, png).expect("cannot write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
