//! The registry: table rows become running, held or shadowed instances.

use super::*;
use crate::config::ProviderSettings;
use crate::provider::WawpClient;
use chrono::TimeZone;

fn record(name: &str, settings: serde_json::Value, enabled: bool, removed: bool) -> InstanceRecord {
    let t = Utc.timestamp_millis_opt(1_000).single().unwrap();
    InstanceRecord {
        name: name.into(),
        settings: settings.as_object().cloned().unwrap(),
        enabled,
        removed_at: removed.then_some(t),
        created_at: t,
        updated_at: t,
    }
}

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap()
}

/// Which table rows send, which are held (and why), which the file
/// shadows; and that a row is judged unknown only by a newer view.
#[test]
fn table_rows_become_running_held_or_shadowed() {
    std::env::set_var("STATUSD_UNIT_TOKEN_A", "tok-a");
    let make = crate::app::wawp_maker(&ProviderSettings::default());
    let file_cfg = InstanceConfig {
        instance_id: "main".into(),
        access_token: Some("t".to_string().into()),
        ..Default::default()
    };
    let main = Instance::new(
        "main",
        WawpClient::new("main", &file_cfg, &ProviderSettings::default()).unwrap(),
        20,
        20,
    );
    let reg = Registry::new(vec![main]);
    let ok = serde_json::json!({"instance_id": "a", "access_token_env": "STATUSD_UNIT_TOKEN_A", "base_url": "http://127.0.0.1:9"});
    let unset =
        serde_json::json!({"instance_id": "b", "access_token_env": "STATUSD_UNIT_TOKEN_UNSET"});
    let table = InstanceTable {
        rows: vec![
            record("a", ok.clone(), true, false),
            record("b", unset, true, false),
            record("c", ok.clone(), false, false),
            record("d", ok.clone(), true, true),
            record("main", ok.clone(), true, false),
        ],
        read_at: at(10_000),
    };
    let changes = reg.apply(&table, &make);
    assert_eq!(changes.started, vec!["a".to_string()]);
    let s = reg.snapshot();
    let mut running: Vec<&String> = s.running.keys().collect();
    running.sort();
    assert_eq!(running, ["a", "main"]);
    assert!(
        s.held["b"].contains("STATUSD_UNIT_TOKEN_UNSET is not set"),
        "{}",
        s.held["b"]
    );
    assert!(s.held["c"].contains("disabled"));
    assert!(s.held["d"].contains("removed"));
    assert!(s.shadowed.contains("main"));
    // Held names are skipped by claims; their rows are valid.
    let skip = reg.not_sending();
    assert!(skip.contains(&"c".to_string()) && !skip.contains(&"a".to_string()));
    assert_eq!(reg.check_known("c", at(1)), None);
    // Unknown: judged by a view newer than the row, not by an older one.
    assert!(reg.check_known("zzz", at(9_000)).is_some());
    assert_eq!(reg.check_known("zzz", at(11_000)), None);

    // The same settings and token again: the same instance (its rate
    // limiter and pause carry on); enabling `c` starts it and releases it.
    let a_before = reg.get("a").unwrap();
    let mut table2 = table.clone();
    table2.rows[2].enabled = true;
    let changes = reg.apply(&table2, &make);
    assert!(Arc::ptr_eq(&a_before, &reg.get("a").unwrap()));
    assert_eq!(changes.started, vec!["c".to_string()]);
    assert_eq!(changes.released, vec!["c".to_string()]);
}

/// A table instance's `max_in_flight` is its own (the default when
/// unset), as a file instance's is.
#[test]
fn table_instances_take_their_max_in_flight() {
    std::env::set_var("STATUSD_UNIT_TOKEN_M", "tok-m");
    let make = crate::app::wawp_maker(&ProviderSettings::default());
    let reg = Registry::new(Vec::new());
    let with = serde_json::json!({"instance_id": "m", "access_token_env": "STATUSD_UNIT_TOKEN_M", "base_url": "http://127.0.0.1:9", "max_in_flight": 3});
    let without = serde_json::json!({"instance_id": "n", "access_token_env": "STATUSD_UNIT_TOKEN_M", "base_url": "http://127.0.0.1:9"});
    let table = InstanceTable {
        rows: vec![
            record("m", with, true, false),
            record("n", without, true, false),
        ],
        read_at: at(10_000),
    };
    reg.apply(&table, &make);
    assert_eq!(reg.get("m").unwrap().max_in_flight, 3);
    assert_eq!(
        reg.get("n").unwrap().max_in_flight,
        crate::config::DEFAULT_MAX_IN_FLIGHT
    );
}

/// Taking an instance over starts from an empty bucket: no burst on
/// top of what the previous holder sent.
#[test]
fn an_emptied_bucket_has_no_burst_left() {
    let cfg = InstanceConfig {
        instance_id: "e".into(),
        access_token: Some("t".to_string().into()),
        ..Default::default()
    };
    let client = WawpClient::new("e", &cfg, &ProviderSettings::default()).unwrap();
    let inst = Instance::new("e", client, 1, 50);
    assert!(inst.limiter.check().is_ok(), "a fresh bucket is full");
    inst.empty_bucket();
    assert!(
        inst.limiter.check().is_err(),
        "an emptied bucket has no token left"
    );
}
