//! The database file under redb, where a commit may leave its sync to finish behind it.
//!
//! redb makes a commit durable with one `sync_data` at its end, and waits for it. On the host,
//! applying a site's pushes is CPU work, then that wait, then the next batch: the disk and the
//! CPU take turns. `WriteBehind` lets a writer that asked for it (a thread inside
//! `Replica::deferring_syncs`) hand the sync of its commit to one I/O thread and go on with the
//! next transaction at once; whoever acts on the commit waits for it with `wait_durable` first.
//! Every other operation runs on the file directly, as redb's own file backend does.
//!
//! Invariants:
//! - The file sees every write, length change and sync in the order redb issued them: while a
//!   deferred sync waits or runs, later operations queue behind it and the I/O thread runs them
//!   in order. A crash at any moment leaves a file that waiting for each sync could have left,
//!   which redb's recovery handles.
//! - A sync that is not deferred returns once it and everything queued before it are on disk.
//! - A read of bytes that a queued write or length change touches waits for it.
//! - The queue holds at most `QUEUE_BYTES_MAX` bytes of writes; a writer beyond it waits.
//! - After a failed operation every later one fails with it (the file's state is unknown until
//!   the database is opened again), and so does every wait for durability.

use std::collections::VecDeque;
use std::io;
use std::ops::{Bound, Range};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use redb::{BackendError, StorageBackend};

/// Most bytes of writes waiting in the queue.
const QUEUE_BYTES_MAX: usize = 64 << 20;

#[derive(Debug)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
    Sync,
}

impl Op {
    /// Whether a read of `range` must wait for this operation.
    fn touches(&self, range: &Range<u64>) -> bool {
        match self {
            Op::Write { offset, data } => {
                *offset < range.end && range.start < offset.saturating_add(data.len() as u64)
            }
            // A shorter or longer file changes what any read beyond its old end gets.
            Op::SetLen(_) => true,
            Op::Sync => false,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Op::Write { data, .. } => data.len(),
            Op::SetLen(_) | Op::Sync => 0,
        }
    }
}

/// What the writer and the I/O thread share, under one lock.
#[derive(Debug, Default)]
struct Queue {
    /// Operations waiting, with their sequence numbers, oldest first.
    waiting: VecDeque<(u64, Arc<Op>)>,
    /// The operation the I/O thread runs, if any, with its sequence number.
    running: Option<(u64, Arc<Op>)>,
    /// Sequence number of the last operation queued.
    issued: u64,
    /// Sequence number of the last operation done (all before it are done too).
    done: u64,
    /// Bytes of the writes waiting or running.
    bytes: usize,
    /// The length the file will have once the queued length changes are done.
    len: Option<u64>,
    /// The first failure, kept: every later operation reports it.
    failed: Option<(io::ErrorKind, String)>,
    /// Set while a deferring writer commits: its syncs are queued, not waited for.
    defer_syncs: bool,
    /// Set by `close`: the I/O thread stops once the queue is empty.
    closing: bool,
}

impl Queue {
    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, message)) => Err(io::Error::new(
                *kind,
                format!("an earlier write to the database file failed: {message}"),
            )),
            None => Ok(()),
        }
    }

    fn idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_none()
    }
}

#[derive(Debug)]
struct Shared {
    /// The file itself (redb's `FileBackend`; a recording one in tests).
    file: Box<dyn StorageBackend>,
    queue: Mutex<Queue>,
    /// Notified when an operation is queued, one is done, or the queue closes.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The lock guards plain bookkeeping: a panic elsewhere cannot leave it half-changed.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        self.changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until operation `seq` is done, or something failed.
    fn wait_done<'a>(
        &self,
        mut queue: MutexGuard<'a, Queue>,
        seq: u64,
    ) -> io::Result<MutexGuard<'a, Queue>> {
        while queue.done < seq && queue.failed.is_none() {
            queue = self.wait(queue);
        }
        queue.check()?;
        Ok(queue)
    }

    /// Queues `op` (waiting while the queue is full); answers its sequence number.
    fn enqueue(&self, mut queue: MutexGuard<'_, Queue>, op: Op) -> io::Result<u64> {
        while queue.bytes > 0 && queue.bytes + op.bytes() > QUEUE_BYTES_MAX {
            queue = self.wait(queue);
            queue.check()?;
        }
        queue.issued += 1;
        let seq = queue.issued;
        queue.bytes += op.bytes();
        if let Op::SetLen(len) = op {
            queue.len = Some(len);
        }
        queue.waiting.push_back((seq, Arc::new(op)));
        self.changed.notify_all();
        Ok(seq)
    }

    /// The I/O thread: runs queued operations in order until the queue closes.
    fn run(&self) {
        loop {
            let mut queue = self.lock();
            while queue.waiting.is_empty() && !queue.closing {
                queue = self.wait(queue);
            }
            let Some((seq, op)) = queue.waiting.pop_front() else {
                return;
            };
            queue.running = Some((seq, op.clone()));
            let failed = queue.failed.is_some();
            drop(queue);
            // After a failure nothing more reaches the file: it is only counted done.
            // A panic in the file's code is a failure like any other: waiters must not wait
            // for a thread that is gone.
            let result = if failed {
                Ok(())
            } else {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match op.as_ref() {
                    Op::Write { offset, data } => self.file.write(*offset, data),
                    Op::SetLen(len) => self.file.set_len(*len),
                    Op::Sync => self.file.sync_data(),
                }))
                .unwrap_or_else(|_| Err(io::Error::other("the database file's I/O panicked")))
            };
            let mut queue = self.lock();
            if let Err(e) = result
                && queue.failed.is_none()
            {
                queue.failed = Some((e.kind(), e.to_string()));
            }
            queue.running = None;
            queue.bytes -= op.bytes();
            queue.done = seq;
            if queue.done == queue.issued {
                queue.len = None;
            }
            self.changed.notify_all();
        }
    }
}

/// Waits for deferred syncs; shared by the replica with the backend redb holds.
#[derive(Debug, Clone)]
pub(super) struct Durability(Arc<Shared>);

/// A point in the file's operations: durable once every operation up to it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Durable(u64);

impl Durability {
    /// The durability of a database whose every commit is durable when it returns
    /// (PostgreSQL): nothing is ever queued, so nothing is waited for.
    pub(super) fn immediate() -> Durability {
        Durability(Arc::new(Shared {
            file: Box::new(redb::backends::InMemoryBackend::new()),
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        }))
    }

    /// Tells this file's handles apart from another's (its address; never 0).
    pub(super) fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// Where the operations issued so far end.
    pub(super) fn issued(&self) -> Durable {
        Durable(self.0.lock().issued)
    }

    /// The first failure of the file, if any.
    pub(super) fn failure(&self) -> Option<String> {
        self.0.lock().check().err().map(|e| e.to_string())
    }

    /// Whether everything up to `point` is on disk already.
    pub(super) fn reached(&self, point: Durable) -> io::Result<bool> {
        let queue = self.0.lock();
        queue.check()?;
        Ok(queue.done >= point.0)
    }

    /// Waits until everything up to `point` is on disk.
    pub(super) fn wait(&self, point: Durable) -> io::Result<()> {
        let queue = self.0.lock();
        self.0.wait_done(queue, point.0).map(drop)
    }

    /// Queues the syncs of the commit that `commit` runs, instead of waiting for them.
    pub(super) fn deferring<T>(&self, commit: impl FnOnce() -> T) -> T {
        /// Stops deferring even if the commit panics: a later commit must wait for its sync.
        struct Reset<'a>(&'a Shared);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                self.0.lock().defer_syncs = false;
            }
        }
        self.0.lock().defer_syncs = true;
        let _reset = Reset(&self.0);
        commit()
    }
}

/// The redb storage backend of a replica (see the module doc).
#[derive(Debug)]
pub(super) struct WriteBehind {
    shared: Arc<Shared>,
    io_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl WriteBehind {
    /// The backend over `file`, and the handle that waits for its deferred syncs.
    pub(super) fn new(file: Box<dyn StorageBackend>) -> io::Result<(WriteBehind, Durability)> {
        let shared = Arc::new(Shared {
            file,
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        });
        let worker = shared.clone();
        let io_thread = std::thread::Builder::new()
            .name("carnet-io".into())
            .spawn(move || worker.run())?;
        let durability = Durability(shared.clone());
        Ok((
            WriteBehind {
                shared,
                io_thread: Mutex::new(Some(io_thread)),
            },
            durability,
        ))
    }

    /// Runs `direct` on the file when nothing is queued, else queues `op`.
    fn run_or_queue(
        &self,
        op: impl FnOnce() -> Op,
        direct: impl FnOnce(&dyn StorageBackend) -> io::Result<()>,
    ) -> io::Result<()> {
        let queue = self.shared.lock();
        queue.check()?;
        if queue.idle() {
            // Only a deferred sync starts a queue, and only redb's writer issues one, the
            // thread issuing this (a reader writes back pages only after a commit without
            // durability, as with the plain file): nothing is queued while this runs.
            drop(queue);
            direct(self.shared.file.as_ref())
        } else {
            self.shared.enqueue(queue, op()).map(drop)
        }
    }

    fn stop_io_thread(&self) {
        self.shared.lock().closing = true;
        self.shared.changed.notify_all();
        let handle = self
            .io_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            // A panic there is reported by the queue's failure, if it mattered.
            let _ = handle.join();
        }
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        // Queued operations still reach the file, in order, before the thread stops.
        self.stop_io_thread();
    }
}

impl StorageBackend for WriteBehind {
    fn len(&self) -> io::Result<u64> {
        let queue = self.shared.lock();
        queue.check()?;
        match queue.len {
            Some(len) => Ok(len),
            None => {
                drop(queue);
                self.shared.file.len()
            }
        }
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let range = offset..offset.saturating_add(out.len() as u64);
        let mut queue = self.shared.lock();
        queue.check()?;
        let last_touching = queue
            .running
            .iter()
            .chain(queue.waiting.iter())
            .filter(|(_, op)| op.touches(&range))
            .map(|(seq, _)| *seq)
            .max();
        if let Some(seq) = last_touching {
            queue = self.shared.wait_done(queue, seq)?;
        }
        drop(queue);
        self.shared.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.run_or_queue(|| Op::SetLen(len), |file| file.set_len(len))
    }

    fn sync_data(&self) -> io::Result<()> {
        let queue = self.shared.lock();
        queue.check()?;
        if queue.defer_syncs {
            return self.shared.enqueue(queue, Op::Sync).map(drop);
        }
        if queue.idle() {
            drop(queue);
            return self.shared.file.sync_data();
        }
        let seq = self.shared.enqueue(queue, Op::Sync)?;
        let queue = self.shared.lock();
        self.shared.wait_done(queue, seq).map(drop)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.run_or_queue(
            || Op::Write {
                offset,
                data: data.to_vec(),
            },
            |file| file.write(offset, data),
        )
    }

    fn close(&self) -> io::Result<()> {
        self.stop_io_thread();
        let failed = self.shared.lock().check();
        let closed = self.shared.file.close();
        failed.and(closed)
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.shared.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.shared.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.shared.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.shared.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.shared.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.shared.file.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::backends::InMemoryBackend;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A file that records the operations reaching it, whose syncs wait for a gate to open,
    /// and whose syncs fail once told to.
    #[derive(Debug, Default)]
    struct Recorder {
        data: InMemoryBackend,
        log: Mutex<Vec<String>>,
        gate_open: Mutex<bool>,
        gate: Condvar,
        fail_syncs: std::sync::atomic::AtomicBool,
    }

    impl Recorder {
        fn open_gate(&self) {
            *self.gate_open.lock().expect("gate") = true;
            self.gate.notify_all();
        }

        fn log(&self) -> Vec<String> {
            self.log.lock().expect("log").clone()
        }
    }

    /// The recorder as the backend sees it.
    #[derive(Debug)]
    struct Recorded(Arc<Recorder>);

    impl StorageBackend for Recorded {
        fn len(&self) -> io::Result<u64> {
            self.0.data.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            self.0.data.read(offset, out)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.0
                .log
                .lock()
                .expect("log")
                .push(format!("set_len {len}"));
            self.0.data.set_len(len)
        }
        fn sync_data(&self) -> io::Result<()> {
            let mut open = self.0.gate_open.lock().expect("gate");
            while !*open {
                open = self.0.gate.wait(open).expect("gate");
            }
            self.0.log.lock().expect("log").push("sync".into());
            if self.0.fail_syncs.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(io::Error::other("disk full"));
            }
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.0
                .log
                .lock()
                .expect("log")
                .push(format!("write {offset}"));
            self.0.data.write(offset, data)
        }
    }

    fn backend() -> (Arc<Recorder>, WriteBehind, Durability) {
        let file = Arc::new(Recorder::default());
        let (backend, durability) =
            WriteBehind::new(Box::new(Recorded(file.clone()))).expect("backend");
        backend.set_len(64).expect("len");
        (file, backend, durability)
    }

    /// A sync as a deferring writer's commit issues it: queued, not waited for.
    fn defer_a_sync(backend: &WriteBehind, durability: &Durability) {
        durability
            .deferring(|| backend.sync_data())
            .expect("a deferred sync is only queued");
    }

    fn read(backend: &WriteBehind, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        backend.read(offset, &mut out).expect("read");
        out
    }

    #[test]
    fn a_deferred_sync_returns_at_once_and_later_operations_reach_the_file_after_it() {
        let (file, backend, durability) = backend();
        backend.write(0, b"first").expect("write");
        // The gate is closed: waiting for this sync would never end.
        defer_a_sync(&backend, &durability);
        let synced = durability.issued();
        backend.write(8, b"second").expect("queued write");
        backend.set_len(128).expect("queued length");
        assert_eq!(
            backend.len().expect("len"),
            128,
            "the length once queued work is done"
        );
        assert_eq!(
            file.log(),
            ["set_len 64", "write 0"],
            "nothing passed the sync"
        );
        file.open_gate();
        durability.wait(synced).expect("durable");
        durability.wait(durability.issued()).expect("all done");
        assert_eq!(
            file.log(),
            ["set_len 64", "write 0", "sync", "write 8", "set_len 128"]
        );
        assert_eq!(read(&backend, 8, 6), b"second");
    }

    #[test]
    fn a_sync_that_is_not_deferred_waits_for_everything_queued_before_it() {
        let (file, backend, durability) = backend();
        defer_a_sync(&backend, &durability);
        backend.write(0, b"queued").expect("write");
        let (done, finished) = mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| done.send(backend.sync_data()).expect("send"));
            assert!(
                finished.recv_timeout(Duration::from_millis(50)).is_err(),
                "the sync returned before the one queued ahead of it"
            );
            file.open_gate();
            finished
                .recv_timeout(Duration::from_secs(10))
                .expect("the sync returns once the queue is done")
                .expect("sync");
        });
        assert_eq!(file.log(), ["set_len 64", "sync", "write 0", "sync"]);
    }

    #[test]
    fn a_read_of_bytes_a_queued_write_changes_waits_for_that_write() {
        let (file, backend, durability) = backend();
        backend.write(0, b"old").expect("write");
        defer_a_sync(&backend, &durability);
        backend.write(0, b"new").expect("queued write");
        // Bytes no queued write touches are read at once.
        assert_eq!(read(&backend, 32, 3), [0, 0, 0]);
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| read(&backend, 0, 3));
            std::thread::sleep(Duration::from_millis(20));
            file.open_gate();
            assert_eq!(reader.join().expect("reader"), b"new");
        });
    }

    #[test]
    fn after_a_failed_sync_every_operation_and_every_wait_fails() {
        let (file, backend, durability) = backend();
        file.fail_syncs
            .store(true, std::sync::atomic::Ordering::SeqCst);
        file.open_gate();
        defer_a_sync(&backend, &durability);
        let point = durability.issued();
        let waited = durability.wait(point).expect_err("the sync failed");
        assert!(waited.to_string().contains("disk full"), "{waited}");
        assert!(backend.write(0, b"x").is_err());
        assert!(backend.sync_data().is_err());
        let mut out = [0u8; 1];
        assert!(backend.read(0, &mut out).is_err());
        assert!(backend.len().is_err());
        assert!(backend.close().is_err(), "closing reports it too");
    }

    #[test]
    fn dropping_the_backend_lets_queued_operations_reach_the_file_first() {
        let (file, backend, durability) = backend();
        defer_a_sync(&backend, &durability);
        backend.write(0, b"last").expect("queued write");
        file.open_gate();
        drop(backend);
        assert_eq!(file.log(), ["set_len 64", "sync", "write 0"]);
    }

    /// A file that keeps every operation reaching it, in order, to replay any crash.
    #[derive(Debug, Default)]
    struct Logged {
        data: InMemoryBackend,
        ops: Arc<Mutex<Vec<Op>>>,
    }

    impl StorageBackend for Logged {
        fn len(&self) -> io::Result<u64> {
            self.data.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            self.data.read(offset, out)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.ops.lock().expect("ops").push(Op::SetLen(len));
            self.data.set_len(len)
        }
        fn sync_data(&self) -> io::Result<()> {
            // A disk takes its time: an acknowledgement sent before the sync ends is seen.
            std::thread::sleep(Duration::from_millis(1));
            self.ops.lock().expect("ops").push(Op::Sync);
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.ops.lock().expect("ops").push(Op::Write {
                offset,
                data: data.to_vec(),
            });
            self.data.write(offset, data)
        }
    }

    /// What the disk holds after a power cut once `ops[..cut]` were issued: everything up to
    /// the last sync before the cut, then the writes after it that `keep` says reached the
    /// disk anyway (length changes after it are kept: they only change what is unwritten).
    fn disk_after_cut(ops: &[Op], cut: usize, keep: &mut impl FnMut() -> bool) -> InMemoryBackend {
        let synced = ops[..cut]
            .iter()
            .rposition(|op| matches!(op, Op::Sync))
            .map_or(0, |i| i + 1);
        let disk = InMemoryBackend::new();
        for (i, op) in ops[..cut].iter().enumerate() {
            match op {
                Op::Write { offset, data } if i < synced || keep() => {
                    disk.write(*offset, data).expect("write");
                }
                Op::Write { .. } | Op::Sync => {}
                Op::SetLen(len) => disk.set_len(*len).expect("set_len"),
            }
        }
        disk
    }

    #[test]
    fn a_power_cut_anywhere_leaves_a_database_holding_every_acknowledged_commit() {
        use redb::{ReadableDatabase, ReadableTable, TableDefinition};
        const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("t");
        type State = std::collections::BTreeMap<u64, Vec<u8>>;
        let ops = Arc::new(Mutex::new(Vec::new()));
        let file = Logged {
            data: InMemoryBackend::new(),
            ops: ops.clone(),
        };
        let (backend, durability) = WriteBehind::new(Box::new(file)).expect("backend");
        let db = redb::Builder::new()
            .create_with_backend(backend)
            .expect("db");
        // A crash while redb creates the file leaves no database (`carnet init` starts again).
        let created = ops.lock().expect("ops").len();
        // The states the file may hold after a crash, in commit order (the first: empty), and
        // per acknowledged commit, how many operations had reached the file by then.
        let (mut states, mut acked): (Vec<State>, Vec<(usize, usize)>) =
            (vec![State::new()], vec![]);
        for i in 0..24u64 {
            let mut state = states.last().cloned().unwrap_or_default();
            let txn = db.begin_write().expect("txn");
            {
                let mut table = txn.open_table(TABLE).expect("table");
                let value = vec![i as u8; 1500 + 700 * (i as usize % 4)];
                table.insert(i, value.as_slice()).expect("insert");
                state.insert(i, value);
                if i % 5 == 4 {
                    table.remove(i - 3).expect("remove");
                    state.remove(&(i - 3));
                }
            }
            // As the host applies pushes: most commits leave their sync behind, and are
            // acknowledged once durable, some only with a later one.
            let deferred = i % 4 != 3;
            if deferred {
                durability.deferring(|| txn.commit()).expect("commit");
            } else {
                txn.commit().expect("commit");
            }
            states.push(state);
            if !deferred || i % 3 != 0 {
                durability.wait(durability.issued()).expect("durable");
                acked.push((states.len() - 1, ops.lock().expect("ops").len()));
            }
        }
        drop(db);
        let ops = std::mem::take(&mut *ops.lock().expect("ops"));
        assert!(ops.iter().filter(|op| matches!(op, Op::Sync)).count() >= 24);
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for cut in created..=ops.len() {
            // The latest commit acknowledged before the cut: the file must hold it or a later one.
            let at_least = acked
                .iter()
                .filter(|(_, at)| *at <= cut)
                .map(|(state, _)| *state)
                .max()
                .unwrap_or(0);
            let mut keeps: [Box<dyn FnMut() -> bool>; 3] = [
                Box::new(|| false),
                Box::new(|| true),
                Box::new(|| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed & 1 == 1
                }),
            ];
            for keep in &mut keeps {
                let disk = disk_after_cut(&ops, cut, keep);
                let db = redb::Builder::new()
                    .create_with_backend(disk)
                    .unwrap_or_else(|e| panic!("refused after a cut at operation {cut}: {e}"));
                let txn = db.begin_read().expect("read");
                let found: State = match txn.open_table(TABLE) {
                    Ok(table) => table
                        .iter()
                        .expect("iter")
                        .map(|row| {
                            let (k, v) = row.expect("row");
                            (k.value(), v.value().to_vec())
                        })
                        .collect(),
                    Err(redb::TableError::TableDoesNotExist(_)) => State::new(),
                    Err(e) => panic!("cut at {cut}: {e}"),
                };
                assert!(
                    states[at_least..].contains(&found),
                    "a cut at operation {cut} lost commit {at_least} or mixed commits"
                );
            }
        }
    }
}
