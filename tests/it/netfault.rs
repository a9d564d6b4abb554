//! Network faults between the daemon and its peers (issue 16 §3): a small
//! TCP fault proxy in front of the simulator and in front of PostgreSQL adds
//! latency, resets connections mid-request, and black-holes traffic (bytes
//! vanish, no RST: what a half-open connection looks like to its peer) for
//! longer than the request timeout. The real daemon binary must turn each
//! into the right class — in doubt for the provider, retry for the database
//! — keep running, and lose or double nothing.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use statusd::sim::SimConfig;
use statusd::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{
    app_enqueuing, drain_within, spawn_run, start_sim, write_daemon_config, TestDb, TEST_TOKEN,
};

/// What the proxy does to the bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    Pass = 0,
    /// Every chunk waits this long (`Proxy::latency_ms`).
    Latency = 1,
    /// Bytes are swallowed; connections stay open (no FIN, no RST).
    Blackhole = 2,
}

/// A TCP proxy on a loopback port with switchable faults.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    fault: Arc<AtomicU8>,
    latency_ms: Arc<AtomicU64>,
    /// Bumped to reset every open connection (SO_LINGER 0: an RST).
    generation: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let fault = Arc::new(AtomicU8::new(Fault::Pass as u8));
        let latency_ms = Arc::new(AtomicU64::new(0));
        let generation = Arc::new(AtomicU64::new(0));
        let (f, l, g) = (fault.clone(), latency_ms.clone(), generation.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (f, l, g) = (f.clone(), l.clone(), g.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let born = g.load(Ordering::SeqCst);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pump(cr, sw, f.clone(), l.clone(), g.clone(), born);
                    let down = pump(sr, cw, f, l, g, born);
                    // Either side ending (or a reset) ends the connection.
                    let (a, b) = tokio::join!(up, down);
                    for half in [a, b].into_iter().flatten() {
                        let _ = half.set_zero_linger();
                    }
                });
            }
        });
        Proxy {
            addr,
            fault,
            latency_ms,
            generation,
            task,
        }
    }

    pub fn set(&self, fault: Fault, latency: Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
        self.fault.store(fault as u8, Ordering::SeqCst);
    }

    /// Resets every connection open now, mid-request or idle.
    pub fn reset_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` under the current fault; returns the socket to
/// reset when the connection's generation has passed.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    fault: Arc<AtomicU8>,
    latency_ms: Arc<AtomicU64>,
    generation: Arc<AtomicU64>,
    born: u64,
) -> Option<TcpStream> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            r = from.read(&mut buf) => r,
            _ = wait_for_reset(&generation, born) => {
                return from.reunite(to).ok();
            }
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return None;
            }
            Ok(n) => n,
        };
        match fault.load(Ordering::SeqCst) {
            x if x == Fault::Blackhole as u8 => continue,
            x if x == Fault::Latency as u8 => {
                tokio::time::sleep(Duration::from_millis(latency_ms.load(Ordering::SeqCst))).await;
            }
            _ => {}
        }
        if generation.load(Ordering::SeqCst) != born {
            return from.reunite(to).ok();
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return None;
        }
    }
}

async fn wait_for_reset(generation: &AtomicU64, born: u64) {
    while generation.load(Ordering::SeqCst) == born {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_and_database_network_faults_lose_and_double_nothing() {
    let db = TestDb::postgres().await;
    let store = db.pg_store().await;
    let sim = start_sim(SimConfig {
        latency_min_ms: 1,
        latency_max_ms: 5,
        tokens: [("main".to_string(), TEST_TOKEN.to_string())].into(),
        ..SimConfig::default()
    })
    .await;
    let sim_addr: std::net::SocketAddr = sim
        .base_url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("simulator address");
    let sim_proxy = Proxy::start(sim_addr).await;
    let pg_proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let proxied_db = db.url.replacen(
        "127.0.0.1:5432",
        &format!("127.0.0.1:{}", pg_proxy.addr.port()),
        1,
    );
    assert_ne!(
        proxied_db, db.url,
        "the daemon's database URL goes through the proxy"
    );
    let cfg = tempfile::tempdir().unwrap();
    write_daemon_config(
        cfg.path(),
        &proxied_db,
        &format!("http://{}", sim_proxy.addr),
    );
    let log_path = cfg.path().join("statusd.log");
    // A black-holed connection fails a call after this long (store::Timed).
    let mut daemon = spawn_run(
        cfg.path(),
        &log_path,
        "info",
        &[("STATUSD__DATABASE__CALL_TIMEOUT_MS", "2000")],
    );

    let rows = 400;
    // ~24 s: rows keep coming through every fault and after the last.
    let app = app_enqueuing(&store, rows, 60);
    // The faults start once the daemon is up and posting: on a loaded
    // machine its start can outlast the first faults, which then prove
    // nothing.
    let up = Instant::now() + Duration::from_secs(60);
    while sim.stats().posted == 0 {
        assert!(Instant::now() < up, "the daemon posted nothing in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Faults by kind, each longer than the 800 ms request timeout where it
    // holds traffic, alternating between the provider and the database.
    let plan: [(&Proxy, &str, Fault, u64); 6] = [
        (&sim_proxy, "provider latency 300 ms", Fault::Latency, 300),
        (&sim_proxy, "provider black hole", Fault::Blackhole, 0),
        (&pg_proxy, "database latency 200 ms", Fault::Latency, 200),
        (&sim_proxy, "provider resets", Fault::Pass, 0),
        (&pg_proxy, "database resets", Fault::Pass, 0),
        // Last, so that no later reset rescues the connections it leaves stuck.
        (&pg_proxy, "database black hole", Fault::Blackhole, 0),
    ];
    for (proxy, what, fault, ms) in plan {
        tokio::time::sleep(Duration::from_millis(800)).await;
        println!("fault: {what}");
        proxy.set(fault, Duration::from_millis(ms));
        if fault == Fault::Pass {
            for _ in 0..5 {
                proxy.reset_all();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        // Black-holed connections stay open and stuck (the bytes they lost
        // desynchronise them): the daemon's own timeouts must get it out.
        proxy.set(Fault::Pass, Duration::ZERO);
        assert!(
            daemon.try_wait().expect("daemon status").is_none(),
            "the daemon exited during `{what}`; log: {}",
            log_path.display()
        );
    }
    app.await.expect("the app enqueued every row");

    drain_within(&store, 90, 100, "not drained after the faults ended").await;
    crate::support::assert_exactly_once_in(&store, &sim, rows).await;

    // The faults reached the daemon: sends ended in doubt and were
    // reconciled, and database calls failed and were retried.
    let mut in_doubt = 0;
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for row in crate::support::all_rows(&store).await {
        for a in store.attempts(row.id).await.unwrap() {
            // A held or reset call ends in doubt (sent, answer lost) or
            // retryable (never reached the provider): either proves the
            // provider faults reached the daemon.
            if a.outcome == "in_doubt" || a.outcome == "retryable" {
                in_doubt += 1;
            }
            *outcomes.entry(a.outcome).or_default() += 1;
        }
    }
    println!("attempt outcomes: {outcomes:?}");
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let db_errors = logs
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") && l.contains("statusd::store"))
        .count();
    // A send whose outcome could not be written before its lease ran out
    // (the database faults follow the provider's) leaves no history line:
    // the rescuer put the row in doubt first and fenced the late outcome
    // out. The daemon's own report of each failed send counts too.
    let failed_sends = logs
        .lines()
        .filter(|l| l.contains("\"message\":\"send did not post\""))
        .count();
    println!(
        "sends in doubt or retried {in_doubt} (history), {failed_sends} (log); database warnings {db_errors}"
    );
    assert!(
        in_doubt + failed_sends > 0,
        "no send was in doubt or retried: the provider faults did nothing; attempts: {outcomes:?}"
    );
    assert!(
        db_errors > 0,
        "no database call failed: the database faults did nothing"
    );
    assert!(
        daemon.try_wait().expect("daemon status").is_none(),
        "the daemon must still be running"
    );
    let _ = daemon.start_kill();
}
