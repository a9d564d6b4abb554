//! Reading the layers (files, then `STATUSD__…` variables) into settings,
//! collecting every problem with its key in one pass.

use super::*;

/// Reads every layer into one value tree. Environment values stay strings
/// (no `try_parsing`): a token `0012` or `1e3` must reach us as written;
/// numeric settings are converted when deserialized into their field.
pub(super) fn read_layers(src: &ConfigSource) -> Result<config::Value, ConfigError> {
    let dir = src.dir();
    let env = ConfigSource::env_name();
    let mut b = config::Config::builder()
        .add_source(config::File::from(dir.join("default.toml")).required(false))
        .add_source(config::File::from(dir.join(format!("{env}.toml"))).required(false));
    if let Some(f) = &src.file {
        if !f.exists() {
            return Err(ConfigError::Load(format!(
                "config file {} does not exist",
                f.display()
            )));
        }
        b = b.add_source(config::File::from(f.as_path()));
    }
    b = b.add_source(
        config::Environment::with_prefix("STATUSD")
            .prefix_separator("__")
            .separator("__"),
    );
    for (k, v) in &src.overrides {
        b = b
            .set_override(k.as_str(), v.as_str())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
    }
    b.build()
        .and_then(|c| c.try_deserialize::<config::Value>())
        .map_err(|e| ConfigError::Load(without_source_lines(&e.to_string())))
}

/// A TOML syntax error quotes the offending line with a caret under it:
/// that line may hold a token (`token = "abc` with its quote unclosed).
/// Keep the position, the reason and the file; drop the quoted source.
pub(super) fn without_source_lines(msg: &str) -> String {
    let is_source = |l: &str| {
        let t = l.trim_start();
        t.starts_with('|')
            || t.split_once(" |")
                .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    };
    msg.lines()
        .filter(|l| !is_source(l))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Deserializes the file layer, recording each unknown key or wrong type
/// with its path and removing it from the tree before trying again, so
/// that every such problem is found in one run.
pub(super) fn deserialize_collecting(
    tree: &mut config::Value,
    problems: &mut Vec<ConfigProblem>,
) -> RawSettings {
    // Each round removes one key, so the tree's size bounds the rounds;
    // the cap only guards against a removal that does not help.
    for _ in 0..1000 {
        match serde_path_to_error::deserialize::<_, RawSettings>(tree.clone()) {
            Ok(raw) => return raw,
            Err(e) => {
                let path: Vec<String> = e
                    .path()
                    .iter()
                    .map_while(|seg| match seg {
                        serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                        _ => None,
                    })
                    .collect();
                let key = if path.is_empty() {
                    "(configuration)".to_string()
                } else {
                    path.join(".")
                };
                let mut problem = e
                    .inner()
                    .to_string()
                    .replacen("unknown field", "unknown key", 1);
                // The config crate appends the parent's key, which the
                // problem's own key already says better.
                if let Some(i) = problem.rfind(" for key `") {
                    problem.truncate(i);
                }
                problems.push(ConfigProblem::new(key, problem));
                if !remove_path(tree, &path) {
                    break;
                }
            }
        }
    }
    RawSettings::default()
}

pub(super) fn remove_path(tree: &mut config::Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = tree;
    for key in parents {
        match &mut cur.kind {
            config::ValueKind::Table(map) => match map.get_mut(key) {
                Some(next) => cur = next,
                None => return false,
            },
            _ => return false,
        }
    }
    match &mut cur.kind {
        config::ValueKind::Table(map) => map.remove(last).is_some(),
        _ => false,
    }
}

/// Turns the file layer into settings: required keys, and secrets read from
/// their `*_file` keys. A missing or unreadable value is recorded and left
/// empty, so the remaining checks still run.
pub(super) fn resolve(raw: RawSettings, problems: &mut Vec<ConfigProblem>) -> Settings {
    let mut push = |key: &str, problem: String| problems.push(ConfigProblem::new(key, problem));
    let empty = || SecretString::from(String::new());
    let url = match (&raw.database.url_file, raw.database.url) {
        (Some(path), _) => read_secret_file(path).unwrap_or_else(|e| {
            push("database.url_file", e.to_string());
            empty()
        }),
        (None, Some(url)) => url,
        (None, None) => {
            push(
                "database.url",
                "is required: set it in a config file, with database.url_file, \
                 STATUSD__DATABASE__URL or --database-url"
                    .into(),
            );
            empty()
        }
    };
    let token = match (&raw.admin.token_file, raw.admin.token) {
        (Some(path), _) => match read_secret_file(path) {
            Ok(t) => Some(t),
            Err(e) => {
                push("admin.token_file", e.to_string());
                None
            }
        },
        (None, token) => token,
    };
    Settings {
        database: DatabaseSettings {
            url,
            max_connections: raw.database.max_connections,
            call_timeout_ms: raw.database.call_timeout_ms,
        },
        daemon: raw.daemon,
        admin: AdminSettings {
            enabled: raw.admin.enabled,
            bind: raw.admin.bind,
            token,
        },
        provider: raw.provider,
        instances: raw.instances,
        webhooks: raw.webhooks,
        secret_files: SecretFiles {
            admin_token_file: raw.admin.token_file,
            database_url_file: raw.database.url_file,
        },
    }
}

/// The environment source lowercases its keys, so
/// `STATUSD__INSTANCES__MAIN__ACCESS_TOKEN` can only reach `[instances.main]`:
/// an upper-case name in a file would silently become a second, incomplete
/// instance, reported as a puzzling missing field. Say what is wrong instead.
pub(super) fn instance_name_problems(tree: &config::Value) -> Vec<ConfigProblem> {
    let config::ValueKind::Table(root) = &tree.kind else {
        return Vec::new();
    };
    let Some(config::ValueKind::Table(instances)) = root.get("instances").map(|v| &v.kind) else {
        return Vec::new();
    };
    instances
        .keys()
        .filter(|k| k.chars().any(char::is_uppercase))
        .map(|k| {
            ConfigProblem::new(
                format!("instances.{k}"),
                format!(
                    "instance names must be lowercase: STATUSD__INSTANCES__… variables are \
                     lowercased and would configure `{}` instead; rename it",
                    k.to_lowercase()
                ),
            )
        })
        .collect()
}
