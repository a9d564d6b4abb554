//! Shared test fixtures: a fresh SQLite file or a fresh PostgreSQL database
//! per test. PostgreSQL is real: `STATUSD_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432`) must reach a server; tests fail,
//! never skip, when it does not.

use statusd::store::{EnqueueParams, PgStore, SqliteStore, Store};

pub fn pg_base() -> String {
    std::env::var("STATUSD_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A throwaway database; the SQLite file lives in a temporary directory,
/// the PostgreSQL database is dropped when the test ends normally.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("statusd.db").display());
        TestDb {
            url,
            _dir: Some(dir),
            pg_name: None,
        }
    }

    pub async fn postgres() -> TestDb {
        use sqlx::Connection;
        let name = format!("statusd_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&format!("{}/postgres", pg_base()))
            .await
            .expect("PostgreSQL must be running for the tests (see .ci/run)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        TestDb {
            url: format!("{}/{name}", pg_base()),
            _dir: None,
            pg_name: Some(name),
        }
    }

    pub async fn sqlite_store(&self) -> SqliteStore {
        let s = SqliteStore::connect(&self.url, 8)
            .await
            .expect("open sqlite");
        s.migrate().await.expect("migrate sqlite");
        s
    }

    pub async fn pg_store(&self) -> PgStore {
        let s = PgStore::connect(&self.url, 16).await.expect("connect pg");
        s.migrate().await.expect("migrate pg");
        s
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Best effort, outside the test's runtime; leftovers are dropped by .ci/run.
            let base = pg_base();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(async move {
                        use sqlx::Connection;
                        if let Ok(mut c) =
                            sqlx::PgConnection::connect(&format!("{base}/postgres")).await
                        {
                            let _ = sqlx::query(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .execute(&mut c)
                            .await;
                        }
                    })
                }
            })
            .join();
        }
    }
}

/// A valid text status with unique content.
pub fn text(instance: &str, n: usize) -> EnqueueParams {
    EnqueueParams {
        instance: instance.into(),
        kind: "text".into(),
        payload: serde_json::json!({ "text": format!("status number {n}") }).to_string(),
        ..Default::default()
    }
}

/// Runs each listed generic test `fn name<S: Store>(s: S)` against SQLite
/// and against PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = $crate::support::TestDb::sqlite().await;
                    super::$name(db.sqlite_store().await, &db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = $crate::support::TestDb::postgres().await;
                    super::$name(db.pg_store().await, &db).await;
                }
            )*
        }
    };
}

/// Runs SQL as an upstream app would, straight on the database.
pub async fn exec_raw(db: &TestDb, sql: &str) -> Result<u64, sqlx::Error> {
    use sqlx::Connection;
    if db.url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(&db.url).await?;
        Ok(sqlx::raw_sql(sql).execute(&mut c).await?.rows_affected())
    } else {
        let mut c = sqlx::PgConnection::connect(&db.url).await?;
        Ok(sqlx::raw_sql(sql).execute(&mut c).await?.rows_affected())
    }
}
