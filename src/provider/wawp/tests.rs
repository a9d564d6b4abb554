use chrono::Utc;
use serde_json::json;

use super::*;
use crate::model::StatusBody;
use crate::sim::{SimConfig, Simulator};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use tracing_subscriber::util::SubscriberInitExt as _;

const TOKEN: &str = "tok-SECRET-4f9a2c77e1";
const OTHER_TOKEN: &str = "tok-OTHER-0b3d9e55a8";

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything logged at any level by anyone (reqwest's `log` records
/// included, through the log bridge `try_init` installs). Global,
/// because hyper and reqwest log from their own tasks.
fn capture() -> (Capture, Option<tracing::subscriber::DefaultGuard>) {
    static GLOBAL: OnceLock<Option<Capture>> = OnceLock::new();
    let global = GLOBAL.get_or_init(|| {
        let cap = Capture(Arc::new(Mutex::new(Vec::new())));
        subscriber(&cap).try_init().ok().map(|_| cap)
    });
    match global {
        Some(cap) => (cap.clone(), None),
        // Another test installed a global subscriber first: capture
        // this thread (the test runs on a current-thread runtime).
        None => {
            let cap = Capture(Arc::new(Mutex::new(Vec::new())));
            let guard = tracing::subscriber::set_default(subscriber(&cap));
            (cap, Some(guard))
        }
    }
}

/// Every level, no colours, written into `cap`.
fn subscriber(cap: &Capture) -> impl tracing::Subscriber + Send + Sync {
    let w = cap.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || w.clone())
        .finish()
}

fn client(base: &str, token: &str, supplied_id: bool) -> WawpClient {
    let inst: InstanceConfig = serde_json::from_value(json!({
        "base_url": base,
        "instance_id": "inst-1",
        "access_token": token,
        "supplied_id": supplied_id,
    }))
    .expect("instance config");
    let settings: ProviderSettings = serde_json::from_value(json!({
        "connect_timeout_ms": 300,
        "request_timeout_ms": 300,
    }))
    .expect("provider settings");
    WawpClient::new("main", &inst, &settings).expect("client")
}

#[tokio::test(flavor = "current_thread")]
async fn the_token_never_leaves_the_module() {
    let (cap, _guard) = capture();
    let mut cfg = SimConfig {
        hang_ms: 1_000,
        seed: Some(7),
        ..SimConfig::default()
    };
    cfg.tokens.insert("inst-1".into(), TOKEN.into());
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), cfg.clone())
        .await
        .unwrap();
    let good = client(&sim.base_url(), TOKEN, true);
    let wrong = client(&sim.base_url(), OTHER_TOKEN, true);
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        client(&format!("http://127.0.0.1:{port}"), TOKEN, true)
    };
    let mut seen: Vec<String> = vec![format!("{good:?}"), format!("{wrong:?}")];
    let faults: [fn(&mut SimConfig); 8] = [
        |_| {},
        |c| c.lost_response = 1.0,
        |c| c.error_5xx_before = 1.0,
        |c| c.error_5xx_after = 1.0,
        |c| c.hang = 1.0,
        |c| c.hang_after_commit = 1.0,
        |c| c.rate_limited_429 = 1.0,
        |c| c.malformed_body = 1.0,
    ];
    let mut labels = Vec::new();
    for (i, set) in faults.iter().enumerate() {
        let mut c = cfg.clone();
        set(&mut c);
        sim.set_config(c).unwrap();
        let body =
            StatusBody::parse("text", &json!({ "text": format!("s{i}") }).to_string()).unwrap();
        let id = crate::wire::ids::local_message_id();
        let status = OutgoingStatus {
            message_id: &id,
            body: &body,
        };
        let out = good.send_status(&status).await;
        labels.push(out.label());
        seen.push(format!("{out:?}"));
        seen.push(format!("{:?}", good.new_message_id().await));
        let q = ListRequest {
            offset: 0,
            limit: 10,
            since: Utc::now() - chrono::Duration::minutes(1),
        };
        seen.push(format!("{:?}", good.lookup_by_id(&id).await));
        seen.push(format!("{:?}", good.list_statuses(&q).await));
        for other in [&wrong, &refused] {
            seen.push(format!("{:?}", other.send_status(&status).await));
            seen.push(format!("{:?}", other.lookup_by_id(&id).await));
            seen.push(format!("{:?}", other.list_statuses(&q).await));
        }
    }
    sim.set_config(cfg.clone()).unwrap();
    for r in [
        good.probe().await,
        wrong.probe().await,
        refused.probe().await,
    ] {
        if let Err(e) = r {
            seen.push(e.to_string());
            seen.push(format!("{e:?}"));
        }
    }
    seen.push(format!(
        "{:?}",
        good.delete_status("3EB0000000000000000000FF").await
    ));
    seen.push(format!("{:?}", wrong.new_message_id().await));
    seen.push(format!("{:?}", refused.new_message_id().await));
    sim.shutdown().await;

    // Every class was exercised, so the check below covers them all.
    assert_eq!(
        labels,
        [
            "posted",
            "in_doubt",
            "retryable",
            "in_doubt",
            "in_doubt",
            "in_doubt",
            "retryable",
            "in_doubt"
        ]
    );
    let all = seen.join("\n");
    assert!(
        all.contains("instance_down") || all.contains("InstanceDown"),
        "{all}"
    );
    assert!(all.contains("request not sent"), "{all}");
    for t in [TOKEN, OTHER_TOKEN] {
        assert!(!all.contains(t), "token in an outcome or error:\n{all}");
    }
    let logs =
        String::from_utf8_lossy(&cap.0.lock().unwrap_or_else(|e| e.into_inner())).to_string();
    assert!(
        logs.contains("provider call"),
        "capture is not working:\n{logs}"
    );
    assert!(
        logs.contains("provider exchange"),
        "trace level not captured:\n{logs}"
    );
    assert!(
        logs.contains("hyper_util"),
        "library logs not captured:\n{logs}"
    );
    for t in [TOKEN, OTHER_TOKEN] {
        assert!(!logs.contains(t), "token in the logs:\n{logs}");
    }
}
