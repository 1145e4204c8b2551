//! Store tests against real SQLite: in memory where the file does not
//! matter, a tempfile where it does (WAL, reopen, two connections).

use std::collections::BTreeMap;

use super::events::{self, NewEvent};
use super::sandboxes::{self, Cursor, Order, SandboxFilter, SandboxRow};
use super::{Error, SCHEMA_VERSION, Store};

type TestResult = anyhow::Result<()>;

fn sandbox(id: &str, started_at_ms: i64) -> SandboxRow {
    SandboxRow {
        sandbox_id: id.to_owned(),
        lifecycle_id: format!("{id}-l1"),
        template_id: "base".to_owned(),
        alias: None,
        state: "Running".to_owned(),
        state_reason: None,
        cpu_count: 2,
        memory_mb: 512,
        disk_size_mb: 1024,
        metadata: BTreeMap::new(),
        env_vars: BTreeMap::from([("A".to_owned(), "1".to_owned())]),
        envd_access_token: None,
        allow_internet_access: true,
        auto_pause: false,
        started_at_ms,
        end_at_ms: started_at_ms + 300_000,
        vm_driver: Some("qemu".to_owned()),
        vm_dir: Some(format!("vms/{id}")),
        created_at_ms: started_at_ms,
        updated_at_ms: started_at_ms,
    }
}

fn ids(rows: &[SandboxRow]) -> Vec<&str> {
    rows.iter().map(|r| r.sandbox_id.as_str()).collect()
}

#[test]
fn migrations_are_idempotent_across_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let store = Store::open(dir.path())?;
        assert_eq!(store.schema_version()?, SCHEMA_VERSION);
        sandboxes::insert(store.conn(), &sandbox("a", 1))?;
    }
    for _ in 0..2 {
        let store = Store::open(dir.path())?;
        assert_eq!(store.schema_version()?, SCHEMA_VERSION);
        assert!(sandboxes::get(store.conn(), "a")?.is_some());
    }
    Ok(())
}

#[test]
fn refuses_a_newer_schema() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let store = Store::open(dir.path())?;
        store
            .conn()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)?;
    }
    match Store::open(dir.path()) {
        Err(Error::SchemaTooNew { found, known }) => {
            assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    Ok(())
}

#[test]
fn file_database_uses_wal_and_foreign_keys() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    assert_eq!(store.journal_mode()?, "wal");
    let fk: bool = store
        .conn()
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
    assert!(fk);
    assert!(dir.path().join(super::DB_FILE_NAME).exists());
    Ok(())
}

#[test]
fn sandbox_crud() -> TestResult {
    let store = Store::open_in_memory()?;
    let conn = store.conn();
    let mut row = sandbox("sb1", 1_000);
    row.metadata.insert("team".to_owned(), "red".to_owned());
    row.envd_access_token = Some("tok".to_owned());
    sandboxes::insert(conn, &row)?;
    assert_eq!(sandboxes::get(conn, "sb1")?.as_ref(), Some(&row));
    assert!(matches!(
        sandboxes::insert(conn, &row),
        Err(Error::SandboxExists { sandbox_id }) if sandbox_id == "sb1"
    ));

    assert!(sandboxes::update_state(
        conn,
        "sb1",
        "Failed",
        Some("vm exited"),
        2_000
    )?);
    assert!(sandboxes::update_end_at(conn, "sb1", 9_000, 2_001)?);
    assert!(sandboxes::update_lifecycle(
        conn,
        "sb1",
        "sb1-l2",
        Some("cloud-hypervisor"),
        None,
        2_002
    )?);
    let got = sandboxes::get(conn, "sb1")?.ok_or_else(|| anyhow::anyhow!("row vanished"))?;
    assert_eq!(got.state, "Failed");
    assert_eq!(got.state_reason.as_deref(), Some("vm exited"));
    assert_eq!(got.end_at_ms, 9_000);
    assert_eq!(got.lifecycle_id, "sb1-l2");
    assert_eq!(got.vm_driver.as_deref(), Some("cloud-hypervisor"));
    assert_eq!(got.vm_dir, None);
    assert_eq!(got.updated_at_ms, 2_002);
    assert_eq!(got.created_at_ms, 1_000);

    assert!(!sandboxes::update_state(conn, "nope", "Running", None, 1)?);
    assert!(sandboxes::delete(conn, "sb1")?);
    assert!(!sandboxes::delete(conn, "sb1")?);
    assert_eq!(sandboxes::get(conn, "sb1")?, None);
    Ok(())
}

#[test]
fn pagination_walks_every_row_once_in_order() -> TestResult {
    let store = Store::open_in_memory()?;
    let conn = store.conn();
    // Ties on started_at are broken by sandbox_id.
    for (id, t) in [
        ("e", 30),
        ("a", 10),
        ("c", 20),
        ("b", 20),
        ("d", 20),
        ("f", 40),
        ("g", 5),
    ] {
        sandboxes::insert(conn, &sandbox(id, t))?;
    }
    for (order, want) in [
        (Order::Asc, ["g", "a", "b", "c", "d", "e", "f"]),
        (Order::Desc, ["f", "e", "d", "c", "b", "a", "g"]),
    ] {
        let mut seen = Vec::new();
        let mut filter = SandboxFilter {
            order,
            limit: Some(3),
            ..SandboxFilter::default()
        };
        let mut pages = 0;
        loop {
            let page = sandboxes::list(conn, &filter)?;
            pages += 1;
            assert!(page.rows.len() <= 3);
            seen.extend(page.rows.iter().map(|r| r.sandbox_id.clone()));
            match page.next {
                // Round-trip through the header form, as the API will.
                Some(next) => filter.cursor = Cursor::from_token(&next.to_token()),
                None => break,
            }
        }
        assert_eq!(seen, want);
        assert_eq!(pages, 3);
    }
    // Exactly one full page: no next cursor.
    let page = sandboxes::list(
        conn,
        &SandboxFilter {
            limit: Some(7),
            ..SandboxFilter::default()
        },
    )?;
    assert_eq!(page.rows.len(), 7);
    assert_eq!(page.next, None);
    Ok(())
}

#[test]
fn cursor_tokens_reject_garbage() {
    assert_eq!(Cursor::from_token(""), None);
    assert_eq!(Cursor::from_token("x:y"), None);
    assert_eq!(Cursor::from_token("12:"), None);
    assert_eq!(
        Cursor::from_token("12:a:b"),
        Some(Cursor {
            started_at_ms: 12,
            sandbox_id: "a:b".to_owned()
        })
    );
}

#[test]
fn filters_by_metadata_state_template_and_start() -> TestResult {
    let store = Store::open_in_memory()?;
    let conn = store.conn();
    let mut a = sandbox("a", 10);
    a.metadata = BTreeMap::from([
        ("team".to_owned(), "red".to_owned()),
        ("env".to_owned(), "ci".to_owned()),
    ]);
    let mut b = sandbox("b", 20);
    b.metadata = BTreeMap::from([("team".to_owned(), "red".to_owned())]);
    b.state = "Paused".to_owned();
    b.template_id = "tpl123".to_owned();
    b.alias = Some("python".to_owned());
    let mut c = sandbox("c", 30);
    c.metadata = BTreeMap::from([("team".to_owned(), "blue".to_owned())]);
    for row in [&a, &b, &c] {
        sandboxes::insert(conn, row)?;
    }
    let list = |f: SandboxFilter| -> anyhow::Result<Vec<String>> {
        Ok(sandboxes::list(conn, &f)?
            .rows
            .into_iter()
            .map(|r| r.sandbox_id)
            .collect())
    };
    let meta = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        list(SandboxFilter {
            metadata: meta(&[("team", "red")]),
            ..Default::default()
        })?,
        ["a", "b"]
    );
    assert_eq!(
        list(SandboxFilter {
            metadata: meta(&[("team", "red"), ("env", "ci")]),
            ..Default::default()
        })?,
        ["a"]
    );
    // Values are matched exactly, and a quote cannot break out of the query.
    assert!(
        list(SandboxFilter {
            metadata: meta(&[("team", "red' OR 1=1 --")]),
            ..Default::default()
        })?
        .is_empty()
    );
    assert_eq!(
        list(SandboxFilter {
            states: vec!["Paused".to_owned(), "Stopped".to_owned()],
            ..Default::default()
        })?,
        ["b"]
    );
    assert_eq!(
        list(SandboxFilter {
            states: vec!["Running".to_owned()],
            metadata: meta(&[("team", "red")]),
            ..Default::default()
        })?,
        ["a"]
    );
    for name in ["tpl123", "python"] {
        assert_eq!(
            list(SandboxFilter {
                template: Some(name.to_owned()),
                ..Default::default()
            })?,
            ["b"]
        );
    }
    assert_eq!(
        list(SandboxFilter {
            started_after_ms: Some(10),
            order: Order::Desc,
            ..Default::default()
        })?,
        ["c", "b"]
    );
    let page = sandboxes::list(conn, &SandboxFilter::default())?;
    assert_eq!(ids(&page.rows), ["a", "b", "c"]);
    assert_eq!(page.rows[0], a);
    Ok(())
}

#[test]
fn events_append_list_by_time_and_cascade() -> TestResult {
    let store = Store::open_in_memory()?;
    let conn = store.conn();
    sandboxes::insert(conn, &sandbox("sb", 0))?;
    sandboxes::insert(conn, &sandbox("other", 0))?;
    for (ts, kind) in [
        (30, "paused"),
        (10, "created"),
        (20, "pausing"),
        (20, "note"),
    ] {
        events::append(
            conn,
            &NewEvent {
                sandbox_id: "sb",
                lifecycle_id: "sb-l1",
                ts_ms: ts,
                kind,
                message: "m",
            },
        )?;
    }
    events::append(
        conn,
        &NewEvent {
            sandbox_id: "other",
            lifecycle_id: "o",
            ts_ms: 15,
            kind: "created",
            message: "",
        },
    )?;
    let kinds = |from, to, limit| -> anyhow::Result<Vec<String>> {
        Ok(events::list(conn, "sb", from, to, limit)?
            .into_iter()
            .map(|e| e.kind)
            .collect())
    };
    // Equal timestamps keep insertion order.
    assert_eq!(
        kinds(None, None, None)?,
        ["created", "pausing", "note", "paused"]
    );
    assert_eq!(kinds(Some(20), Some(30), None)?, ["pausing", "note"]);
    assert_eq!(kinds(None, None, Some(2))?, ["created", "pausing"]);

    // Unknown sandbox: the foreign key refuses the orphan.
    let orphan = events::append(
        conn,
        &NewEvent {
            sandbox_id: "ghost",
            lifecycle_id: "g",
            ts_ms: 1,
            kind: "created",
            message: "",
        },
    );
    assert!(matches!(orphan, Err(Error::AppendEvent { .. })));

    sandboxes::delete(conn, "sb")?;
    assert!(events::list(conn, "sb", None, None, None)?.is_empty());
    assert_eq!(events::list(conn, "other", None, None, None)?.len(), 1);
    Ok(())
}

#[test]
fn readers_are_not_blocked_by_an_open_write() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut writer = Store::open(dir.path())?;
    let reader = Store::open(dir.path())?;
    sandboxes::insert(writer.conn(), &sandbox("a", 1))?;

    let tx = writer.conn_mut().transaction()?;
    sandboxes::insert(&tx, &sandbox("b", 2))?;
    // The write is uncommitted: the reader sees the last commit at once
    // instead of waiting out the busy timeout.
    let started = std::time::Instant::now();
    let page = sandboxes::list(reader.conn(), &SandboxFilter::default())?;
    assert_eq!(ids(&page.rows), ["a"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    tx.commit()?;
    let page = sandboxes::list(reader.conn(), &SandboxFilter::default())?;
    assert_eq!(ids(&page.rows), ["a", "b"]);
    Ok(())
}

#[test]
fn concurrent_reader_and_writer_threads() -> TestResult {
    let dir = tempfile::tempdir()?;
    // Create the schema once so the two threads do not race on migrations.
    drop(Store::open(dir.path())?);
    let path = dir.path().to_path_buf();
    let writer = std::thread::spawn(move || -> anyhow::Result<()> {
        let store = Store::open(&path)?;
        for i in 0..200_i64 {
            sandboxes::insert(store.conn(), &sandbox(&format!("s{i:03}"), i))?;
            events::append(
                store.conn(),
                &NewEvent {
                    sandbox_id: &format!("s{i:03}"),
                    lifecycle_id: "l",
                    ts_ms: i,
                    kind: "created",
                    message: "",
                },
            )?;
        }
        Ok(())
    });
    let reader = Store::open(dir.path())?;
    let mut last = 0;
    while !writer.is_finished() {
        let n = sandboxes::list(reader.conn(), &SandboxFilter::default())?
            .rows
            .len();
        // Each read is a consistent snapshot, and commits only add rows.
        assert!(n >= last);
        last = n;
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    let n = sandboxes::list(reader.conn(), &SandboxFilter::default())?
        .rows
        .len();
    assert_eq!(n, 200);
    Ok(())
}
