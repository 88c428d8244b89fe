//! SQLite access for both daemons: one writer thread with group commit, a
//! small pool of reader connections, and schema migrations.
//!
//! Every write is a closure run on the writer thread inside its own savepoint;
//! the thread runs as many queued closures as are waiting in one transaction
//! and replies to each caller only after `COMMIT` returned. With WAL and
//! `synchronous=FULL`, a reply therefore means the write is on disk: callers
//! may acknowledge it to a peer. Both daemons link this crate, so they share
//! one durability story.
//!
//! Reads go through [`READERS`] connections (WAL lets each read while the
//! writer writes), so one long read (an audit chain verified, a metrics
//! count over every event) does not hold up authentication and sync.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

/// Errors from the database layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// SQLite refused an operation.
    #[error("database error: {0}")]
    Sqlite(String),
    /// The writer thread is gone (the process is shutting down).
    #[error("database writer has stopped")]
    WriterStopped,
    /// The file was written by a newer version of aios.
    #[error("database schema version {found} is newer than this build supports ({supported}); upgrade aios")]
    SchemaTooNew {
        /// Version found in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// A stored value is not what the schema promises.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl From<rusqlite::Error> for DbError {
    fn from(err: rusqlite::Error) -> DbError {
        DbError::Sqlite(err.to_string())
    }
}

type Finisher = Box<dyn FnOnce(Result<(), DbError>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Finisher + Send>;

/// How much of the file each reader connection maps into memory (address
/// space, not memory: pages are shared with the OS cache).
const READER_MMAP_BYTES: i64 = 1 << 30;

/// Most closures committed in one transaction.
const MAX_GROUP: usize = 512;

/// Reader connections per database.
pub const READERS: usize = 4;

/// Idle reader connections; a read takes one, waiting while all are busy.
struct Readers {
    idle: Mutex<Vec<Connection>>,
    returned: Condvar,
}

impl Readers {
    /// Runs `read` on an idle connection (blocking while none is idle).
    fn with<R>(&self, read: impl FnOnce(&Connection) -> R) -> R {
        let conn = {
            let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            loop {
                match idle.pop() {
                    Some(conn) => break conn,
                    None => idle = self.returned.wait(idle).unwrap_or_else(|poisoned| poisoned.into_inner()),
                }
            }
        };
        // Given back even if `read` panics, so the pool never shrinks.
        struct Return<'a>(&'a Readers, Option<Connection>);
        impl Drop for Return<'_> {
            fn drop(&mut self) {
                if let Some(conn) = self.1.take() {
                    self.0.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(conn);
                    self.0.returned.notify_one();
                }
            }
        }
        let guard = Return(self, Some(conn));
        read(guard.1.as_ref().expect("taken above"))
    }
}

/// A database with a single writer thread and a pool of readers.
#[derive(Clone)]
pub struct Db {
    /// Queue of the writer thread.
    writer: mpsc::UnboundedSender<Job>,
    /// Connections for reads.
    readers: Arc<Readers>,
    /// Where the file lives, for messages.
    path: PathBuf,
}

impl Db {
    /// Opens (creating if needed) the database at `path` and applies
    /// `migrations` in order; `migrations[i]` moves the schema to version i+1.
    pub fn open(path: &Path, migrations: &[&str]) -> Result<Db, DbError> {
        let mut conn = open_connection(path)?;
        migrate(&mut conn, migrations)?;
        let mut idle = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = open_connection(path)?;
            // Reads map the file instead of copying each page through a
            // syscall: a memory search reads a few hundred scattered pages
            // (vectors for its shortlist), which costs a third as much mapped.
            reader.pragma_update(None, "mmap_size", READER_MMAP_BYTES)?;
            idle.push(reader);
        }
        let readers = Arc::new(Readers { idle: Mutex::new(idle), returned: Condvar::new() });
        let (writer, mut queue) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name("aios-db-writer".into())
            .spawn(move || {
                while let Some(first) = queue.blocking_recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < MAX_GROUP {
                        match queue.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                    run_group(&conn, jobs);
                }
            })
            .map_err(|err| DbError::Sqlite(format!("cannot start the writer thread: {err}")))?;
        Ok(Db { writer, readers, path: path.to_owned() })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `write` on the writer thread; returns once its transaction is durably committed.
    pub async fn write<R, F>(&self, write: F) -> Result<R, DbError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, DbError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = in_savepoint(conn, write);
            Box::new(move |commit| {
                let _ = reply.send(commit.and(result));
            })
        });
        self.writer.send(job).map_err(|_| DbError::WriterStopped)?;
        answer.await.map_err(|_| DbError::WriterStopped)?
    }

    /// Moves every committed page from the write-ahead log into the database
    /// file and truncates the log to zero bytes (`wal_checkpoint(TRUNCATE)`),
    /// so that content a write erased lingers in neither. Runs on the reader
    /// connection, outside any transaction, waiting (up to the busy timeout)
    /// for other writers. Returns false when a reader in another process
    /// still needed old pages, so the log could not be emptied yet.
    pub async fn checkpoint_truncate(&self) -> Result<bool, DbError> {
        self.read(|conn| {
            let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
            Ok(busy == 0)
        })
        .await
    }

    /// Runs `read` on the reader connection on this thread: for start-up,
    /// outside the async workers.
    pub fn read_now<R>(&self, read: impl FnOnce(&Connection) -> Result<R, DbError>) -> Result<R, DbError> {
        self.readers.with(read)
    }

    /// Runs `read` on the reader connection, off the async workers.
    pub async fn read<R, F>(&self, read: F) -> Result<R, DbError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, DbError> + Send + 'static,
    {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(read))
            .await
            .map_err(|err| DbError::Sqlite(format!("reader task failed: {err}")))?
    }
}

/// Opens a connection with the pragmas every aios database uses.
pub fn open_connection(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path)?;
    restrict_permissions(path);
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Deleted content is overwritten with zeros, freed pages included, so an
    // erasure or an expiry leaves no copy behind in the file (see
    // `memory forget`). Costs writes only when something is deleted.
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(conn)
}

/// Makes a file readable by its owner only (keys, tokens, the databases).
pub fn restrict_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
}

fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<(), DbError> {
    let supported = migrations.len() as i64;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > supported {
        return Err(DbError::SchemaTooNew { found, supported });
    }
    for (idx, sql) in migrations.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)
            .map_err(|err| DbError::Sqlite(format!("migration to schema version {} failed: {err}", idx + 1)))?;
    }
    tx.pragma_update(None, "user_version", supported)?;
    tx.commit()?;
    Ok(())
}

fn in_savepoint<R>(conn: &Connection, write: impl FnOnce(&Connection) -> Result<R, DbError>) -> Result<R, DbError> {
    conn.execute_batch("SAVEPOINT job")?;
    let result = write(conn);
    let end = if result.is_ok() { "RELEASE job" } else { "ROLLBACK TO job; RELEASE job" };
    conn.execute_batch(end)?;
    result
}

fn run_group(conn: &Connection, jobs: Vec<Job>) {
    if let Err(err) = conn.execute_batch("BEGIN IMMEDIATE") {
        let err = DbError::from(err);
        // Still run nothing: every caller hears why.
        for job in jobs {
            let finish = job(conn);
            finish(Err(err.clone()));
        }
        return;
    }
    let finishers: Vec<Finisher> = jobs.into_iter().map(|job| job(conn)).collect();
    let commit = conn.execute_batch("COMMIT").map_err(DbError::from);
    if commit.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for finish in finishers {
        finish(commit.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATIONS: &[&str] = &["CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);"];

    #[tokio::test]
    async fn failed_job_rolls_back_alone_and_others_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db"), MIGRATIONS).unwrap();
        let ok = db.write(|c| Ok(c.execute("INSERT INTO t VALUES (1, 'a')", [])?));
        let bad = db.write(|c| {
            c.execute("INSERT INTO t VALUES (2, 'b')", [])?;
            Err::<(), _>(DbError::Corrupt("refused".into()))
        });
        let (ok, bad) = tokio::join!(ok, bad);
        assert_eq!(ok.unwrap(), 1);
        assert!(bad.is_err());
        let keys: Vec<i64> = db
            .read(|c| {
                let mut stmt = c.prepare("SELECT k FROM t ORDER BY k")?;
                let keys = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
                Ok(keys)
            })
            .await
            .unwrap();
        assert_eq!(keys, vec![1]);
    }

    /// Issue 24, finding 10: a read that takes long (it waits here until
    /// told) leaves the other readers free; every reader busy makes the
    /// next read wait for one, not fail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_read_does_not_hold_up_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db"), MIGRATIONS).unwrap();
        db.write(|c| Ok(c.execute("INSERT INTO t VALUES (1, 'a')", [])?)).await.unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let mut long = Vec::new();
        for _ in 0..READERS - 1 {
            let held = held.clone();
            long.push(tokio::spawn({
                let db = db.clone();
                async move {
                    db.read(move |c| {
                        let _ = held.lock().unwrap().recv();
                        Ok(c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0))?)
                    })
                    .await
                }
            }));
        }
        // With READERS - 1 readers held, reads still go through, one at a time.
        for _ in 0..20 {
            let quick = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                db.read(|c| Ok(c.query_row("SELECT v FROM t WHERE k = 1", [], |r| r.get::<_, String>(0))?)),
            );
            assert_eq!(quick.await.expect("a read waited for the long ones").unwrap(), "a");
        }
        for _ in 0..READERS - 1 {
            release.send(()).unwrap();
        }
        for read in long {
            assert_eq!(read.await.unwrap().unwrap(), 1);
        }
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        Db::open(&path, &[MIGRATIONS[0], "CREATE TABLE u (x);"]).unwrap();
        let err = Db::open(&path, MIGRATIONS).err().unwrap();
        assert!(matches!(err, DbError::SchemaTooNew { found: 2, supported: 1 }), "{err}");
    }
}
