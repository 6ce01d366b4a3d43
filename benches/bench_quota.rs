//! Benchmark of the quota ledger (not a test; no timed assertions).
//!
//! `cargo run --release --example bench_quota [TAKES]` prints the cost of
//! one `try_take` against a baseline measured in the same run: a bare
//! durable commit (one INSERT in its own `BEGIN IMMEDIATE` transaction,
//! same pragmas), so the figure is the ratio "take vs. the write it
//! cannot avoid", whatever the disk.

use std::time::Instant;

use chrono::{Duration, Utc};
use labgrader::config::Quota;
use labgrader::policy::QuotaLedger;
use rusqlite::{Connection, TransactionBehavior};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
    let dir = tempfile::tempdir().expect("tempdir");

    // Baseline: the durable commit alone.
    let mut conn = Connection::open(dir.path().join("base.sqlite")).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch("CREATE TABLE t (a TEXT, b TEXT, c TEXT, d INTEGER)")
        .unwrap();
    let start = Instant::now();
    for i in 0..n {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        tx.execute(
            "INSERT INTO t VALUES ('lab1', ?1, ?2, ?3)",
            rusqlite::params![format!("u{}", i % 200), format!("j{i}"), i as i64],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let base = start.elapsed().as_secs_f64() / n as f64;

    // try_take: 200 students, a generous quota so every take inserts.
    let ledger = QuotaLedger::in_spool(dir.path()).expect("ledger");
    let quota: Quota = "1000/24h".parse().unwrap();
    let t0 = Utc::now();
    let start = Instant::now();
    for i in 0..n {
        ledger
            .try_take(
                "lab1",
                &format!("u{}", i % 200),
                &format!("j{i}"),
                quota,
                t0 + Duration::milliseconds(i as i64),
            )
            .unwrap();
    }
    let take = start.elapsed().as_secs_f64() / n as f64;

    println!("quota try_take x{n}: {:.3} ms/take", take * 1e3);
    println!("baseline durable insert x{n}: {:.3} ms/commit", base * 1e3);
    println!("ratio take/baseline: {:.2}", take / base);
}
