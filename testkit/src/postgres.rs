//! PostgreSQL for store tests: each test gets a schema of its own in the `test`
//! database, so tests run side by side and never see each other's rows.

/// The database tests use: `$PYTI_TEST_POSTGRES`, or `test` on 127.0.0.1:5432 (trust).
pub fn base_url() -> String {
    std::env::var("PYTI_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A PostgreSQL URL whose connections use a new, empty schema.
pub async fn fresh_schema_url() -> String {
    let base = base_url();
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&base)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (scripts/setup-host.sh sets it up)");
    sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .expect("creating a test schema");
    pool.close().await;
    format!("{base}?options=-c%20search_path%3D{schema}")
}
