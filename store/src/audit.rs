//! The trace: every access decision, allowed or denied, as an append-only hash chain per
//! origin site (DOMAIN §6).
//!
//! Invariants: entry `n` of an origin stores `hash_n = BLAKE3_k(entry_bytes_n || hash_{n-1})`
//! (keyed with the replica's chain key)
//! (entry first: 2.5× faster than previous-hash-first), with `hash_0` all zeros; sequence
//! numbers are contiguous from 1; the origin's head `(last seq, last hash)` is kept apart, so a
//! removed, reordered or altered entry — including the last one — breaks `verify_chain`.
//! Concurrent audited readers share one durable commit through `GroupCommit`.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread::Thread;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{DocId, RepresentativeId, Rpps, SiteId};
use crate::model::{AccessMode, Profession};
use crate::policy::Action;
use crate::time::Millis;

/// Who acted, as recorded in a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceActor {
    /// A professional.
    Professional {
        /// RPPS.
        rpps: Rpps,
        /// Profession, when registered at the site.
        profession: Option<Profession>,
    },
    /// The holder.
    Holder,
    /// A legal representative, by the id the act named (recorded in the dossier head or not:
    /// a denied claim is traced with the id claimed).
    Representative(RepresentativeId),
    /// The system or the host operator.
    System,
}

/// What a trace entry records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceAction {
    /// An access decision on a dossier or document.
    Access(Action),
    /// An administrative act (dossier created, grant changed, closure, purge, import…).
    Admin(String),
    /// A dossier handed over to another site without the host (`replica::handover`), as the
    /// sending site traces it: the host reads the receiving site from it (never from the
    /// receiver's word) and lets that site hold the dossier for a while.
    HandedOver {
        /// The receiving site.
        to: SiteId,
    },
}

impl TraceAction {
    /// Short name for display.
    pub fn name(&self) -> String {
        match self {
            TraceAction::Access(a) => a.as_str().to_string(),
            TraceAction::Admin(s) => s.clone(),
            TraceAction::HandedOver { .. } => "handover-sent".to_string(),
        }
    }
}

/// One trace entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When.
    pub at: Millis,
    /// Site that decided.
    pub origin: SiteId,
    /// Who.
    pub actor: TraceActor,
    /// What.
    pub action: TraceAction,
    /// Dossier matricule (the entry is stored sealed).
    pub ins: Option<String>,
    /// Document.
    pub doc: Option<DocId>,
    /// Access mode.
    pub mode: AccessMode,
    /// Allowed or denied.
    pub allowed: bool,
    /// Row of the decision table (0 for administrative acts).
    pub rule: u8,
    /// The decision's reason.
    pub outcome_reason: String,
    /// Free-text reason given by the actor (break-glass, closure).
    pub stated_reason: Option<String>,
    /// Decided from the site's cached authority, not by the host.
    pub decided_offline: bool,
    /// Version of the authority cache used (highest host record sequence known).
    pub authority_version: u64,
}

/// A stored entry: its position in the chain and its chain hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainedEntry {
    /// Sequence number within the origin's chain, from 1.
    pub seq: u64,
    /// `BLAKE3(entry_bytes || previous hash)`.
    pub hash: [u8; 32],
    /// The entry.
    pub entry: AuditEntry,
}

/// The chain hash of an entry's encoding after `prev`, keyed so that the stored hashes reveal
/// nothing about the (sealed) entries.
pub fn chain_hash(key: &[u8; 32], entry_bytes: &[u8], prev: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(entry_bytes);
    h.update(prev);
    *h.finalize().as_bytes()
}

/// Checks one origin's chain: entries in stored order, each `(seq, stored hash, entry bytes)`,
/// against the head `(last seq, last hash)`. Returns the number of entries checked.
pub fn verify_chain<'a>(
    key: &[u8; 32],
    origin: SiteId,
    entries: impl Iterator<Item = (u64, [u8; 32], &'a [u8])>,
    head: (u64, [u8; 32]),
) -> Result<u64> {
    let mut prev = [0u8; 32];
    let mut expected_seq = 1u64;
    for (seq, hash, bytes) in entries {
        if seq != expected_seq {
            return Err(Error::integrity(format!(
                "trace of site {origin}: entry {expected_seq} is missing (next found is {seq})"
            )));
        }
        if chain_hash(key, bytes, &prev) != hash {
            return Err(Error::integrity(format!(
                "trace of site {origin}: entry {seq} was altered or reordered"
            )));
        }
        prev = hash;
        expected_seq += 1;
    }
    let count = expected_seq - 1;
    if (count, prev) != head {
        return Err(Error::integrity(format!(
            "trace of site {origin}: the chain ends at entry {count} but its head says {} (entries removed from the end?)",
            head.0
        )));
    }
    Ok(count)
}

/// Most entries one group commit takes; later ones wait for the next commit.
pub const GROUP_COMMIT_MAX: usize = 4096;
/// Longest a waiter sleeps before re-checking by itself.
const PARK_MAX: std::time::Duration = std::time::Duration::from_millis(5);
/// Longest the committer sleeps while nothing waits: every submission unparks it, so this is
/// only a safety net (with `PARK_MAX` an idle daemon's committer woke 200 times a second, most
/// of its CPU time).
const PARK_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// The committer stops waiting for more items once this many wait (see `gather`); the batch
/// itself takes every item waiting, up to `GROUP_COMMIT_MAX`.
const GATHER_ENOUGH: usize = 32;
/// One step of gathering (the kernel's timer slack adds about 50 µs to it).
const GATHER_STEP: std::time::Duration = std::time::Duration::from_micros(20);
/// The longest the committer gathers before a sync.
const GATHER_MAX: std::time::Duration = std::time::Duration::from_micros(150);

/// Group commit: concurrent callers each submit one item; one of them (the leader) commits
/// every pending item in one durable write while the others wait, so N concurrent audited
/// reads cost about one sync, not N. A waiter is a thread (`submit`: parked, and woken with no
/// lock to re-acquire) or an asynchronous task (`submit_async`: its waker is woken, no thread
/// switch); a batch wakes in a tree (each woken waiter wakes two more), and leadership passes to
/// the oldest waiter when a leader is done.
///
/// Invariant: a submission completes with `Ok` only after the caller's item is durably
/// committed by `commit`, and with the batch's error otherwise.
#[derive(Debug)]
pub struct GroupCommit<T> {
    queue: Mutex<Vec<(T, Arc<Slot>)>>,
    leader: AtomicBool,
    /// A thread that commits for asynchronous submitters (`run_committer`), if one runs: they
    /// then never block their own thread on a commit.
    committer: Mutex<Option<Thread>>,
    /// Items in the last batch committed.
    last_batch: AtomicUsize,
}

/// Who waits on a slot.
#[derive(Debug, Clone)]
enum Waiter {
    Thread(Thread),
    /// The task's latest waker (set before it returns `Pending`).
    Task(Arc<Mutex<Option<Waker>>>),
}

impl Waiter {
    fn wake(&self) {
        match self {
            Waiter::Thread(t) => t.unpark(),
            Waiter::Task(w) => {
                if let Some(w) = w.lock().ok().and_then(|w| w.clone()) {
                    w.wake();
                }
            }
        }
    }
}

#[derive(Debug)]
struct Slot {
    /// 0 waiting, 1 committed, 2 failed.
    state: AtomicU8,
    error: Mutex<Option<String>>,
    waiter: Waiter,
    /// Set before the state: the batch's waiters and this slot's place among them. A woken
    /// waiter wakes its two children (2i+1, 2i+2), so a batch wakes in a tree of depth log2(n)
    /// instead of one leader waking every waiter in turn.
    wake: OnceLock<(Arc<[Waiter]>, usize)>,
}

impl Slot {
    fn new(waiter: Waiter) -> Arc<Slot> {
        Arc::new(Slot {
            state: AtomicU8::new(0),
            error: Mutex::new(None),
            waiter,
            wake: OnceLock::new(),
        })
    }

    fn settle(&self, result: &Result<()>) {
        if let Err(e) = result {
            if let Ok(mut m) = self.error.lock() {
                *m = Some(e.to_string());
            }
            self.state.store(2, Ordering::SeqCst);
        } else {
            self.state.store(1, Ordering::SeqCst);
        }
    }

    /// Wakes this slot's children in the batch's wake tree.
    fn wake_children(&self) {
        if let Some((waiters, i)) = self.wake.get() {
            for child in [2 * i + 1, 2 * i + 2] {
                if let Some(w @ Waiter::Thread(_)) = waiters.get(child) {
                    w.wake();
                }
            }
            // The first of a batch wakes every task of it (cheap, and off the leader's path).
            if *i == 0 {
                for w in waiters.iter().skip(1) {
                    if let Waiter::Task(_) = w {
                        w.wake();
                    }
                }
            }
        }
    }

    fn outcome(&self) -> Option<Result<()>> {
        match self.state.load(Ordering::SeqCst) {
            0 => None,
            1 => Some(Ok(())),
            _ => Some(Err(Error::Storage(
                self.error
                    .lock()
                    .ok()
                    .and_then(|m| m.clone())
                    .unwrap_or_else(|| "group commit failed".into()),
            ))),
        }
    }
}

impl<T> Default for GroupCommit<T> {
    fn default() -> Self {
        GroupCommit {
            queue: Mutex::new(Vec::new()),
            leader: AtomicBool::new(false),
            committer: Mutex::new(None),
            last_batch: AtomicUsize::new(0),
        }
    }
}

fn lock_err() -> Error {
    Error::Storage("group commit lock poisoned".into())
}

impl<T> GroupCommit<T> {
    /// Submits `item` and returns once it is durably committed by `commit` (called by whichever
    /// caller leads the batch), or with the batch's error.
    pub fn submit(&self, item: T, commit: &dyn Fn(Vec<T>) -> Result<()>) -> Result<()> {
        let slot = Slot::new(Waiter::Thread(std::thread::current()));
        self.queue
            .lock()
            .map_err(|_| lock_err())?
            .push((item, slot.clone()));
        loop {
            if let Some(outcome) = self.progress(&slot, commit)? {
                return outcome;
            }
            // Bounded, as a safety net: a waiter re-checks its slot and the leadership even if a
            // wake-up went astray.
            std::thread::park_timeout(PARK_MAX);
        }
    }

    /// `submit` for an asynchronous task: completes once `item` is durably committed. A task
    /// that finds no leader leads the batch on its own thread (the commit blocks that thread
    /// for one sync); the others wait without holding a thread.
    pub fn submit_async<'a>(&'a self, item: T, commit: &'a Commit<'a, T>) -> Durable<'a, T> {
        Durable {
            group: self,
            item: Some(item),
            slot: None,
            commit,
        }
    }

    /// Commits for asynchronous submitters, on the calling thread, until `running` turns
    /// false: each batch as soon as one is waiting and nobody leads. Meanwhile their tasks wait
    /// without blocking the runtime's threads on a sync.
    pub fn run_committer(&self, commit: &Commit<'_, T>, running: &AtomicBool) {
        if let Ok(mut c) = self.committer.lock() {
            *c = Some(std::thread::current());
        }
        let me = Slot::new(Waiter::Thread(std::thread::current()));
        while running.load(Ordering::SeqCst) {
            let waiting = self.gather();
            if waiting > 0
                && self
                    .leader
                    .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                if self.lead(&me, commit).is_err() {
                    break;
                }
                continue;
            }
            // Nothing waits: whatever is queued from now on unparks this thread (`enqueue`, the
            // first `poll`), and an unpark that comes before the park is not lost. Something
            // waits but another leads: it hands on to this thread when done, and the short
            // timeout covers a hand-on gone astray.
            std::thread::park_timeout(if waiting == 0 { PARK_IDLE } else { PARK_MAX });
        }
        if let Ok(mut c) = self.committer.lock() {
            *c = None;
        }
        // Whoever waits now leads for themselves.
        if let Ok(q) = self.queue.lock() {
            for (_, slot) in q.iter() {
                slot.waiter.wake();
            }
        }
    }

    /// How many items wait, once the committer has let the submitters still arriving join
    /// them. Only after a batch of several (a crowd is reading): it then waits in steps of
    /// `GATHER_STEP` while each step brings more, until as many wait as in the last batch (at
    /// most `GATHER_ENOUGH`), or `GATHER_MAX` in all, so the crowd shares one sync instead of
    /// trickling into many. A lone reader's entry goes at once.
    fn gather(&self) -> usize {
        let len = || self.queue.lock().map_or(0, |q| q.len());
        let mut waiting = len();
        let enough = self.last_batch.load(Ordering::Relaxed).min(GATHER_ENOUGH);
        if enough < 2 {
            return waiting;
        }
        let start = std::time::Instant::now();
        while waiting > 0 && waiting < enough && start.elapsed() < GATHER_MAX {
            std::thread::sleep(GATHER_STEP);
            let now = len();
            if now == waiting {
                break;
            }
            waiting = now;
        }
        waiting
    }

    /// The committer thread, if one runs.
    fn committer(&self) -> Option<Thread> {
        self.committer.lock().ok().and_then(|c| c.clone())
    }

    /// Settles `slot` if it can: its outcome if known (waking its children), else leads one
    /// batch if nobody does. `None`: still waiting.
    fn progress(
        &self,
        slot: &Arc<Slot>,
        commit: &dyn Fn(Vec<T>) -> Result<()>,
    ) -> Result<Option<Result<()>>> {
        loop {
            if let Some(outcome) = slot.outcome() {
                slot.wake_children();
                return Ok(Some(outcome));
            }
            if self
                .leader
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                return Ok(None);
            }
            self.lead(slot, commit)?;
        }
    }

    /// Commits one batch (ours is in the queue, or was committed by the last leader), settles
    /// it, hands the leadership on and wakes the batch.
    fn lead(&self, slot: &Arc<Slot>, commit: &dyn Fn(Vec<T>) -> Result<()>) -> Result<()> {
        let batch: Vec<(T, Arc<Slot>)> = {
            let mut q = self.queue.lock().map_err(|_| lock_err())?;
            let n = q.len().min(GROUP_COMMIT_MAX);
            q.drain(..n).collect()
        };
        self.last_batch.store(batch.len(), Ordering::Relaxed);
        let (items, slots): (Vec<T>, Vec<Arc<Slot>>) = batch.into_iter().unzip();
        if !items.is_empty() {
            // A panicking commit must still settle its batch and release leadership.
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| commit(items)))
                .unwrap_or_else(|_| Err(Error::Storage("the trace commit panicked".into())));
            let waiters: Arc<[Waiter]> = slots.iter().map(|s| s.waiter.clone()).collect();
            for (i, s) in slots.iter().enumerate() {
                let _ = s.wake.set((waiters.clone(), i));
            }
            // Children (higher indexes) are settled before their parents, so a waiter that
            // sees its own result and wakes its children never wakes one too early.
            for s in slots.iter().rev() {
                s.settle(&result);
            }
        }
        // Hand on before waking the batch: whoever waits longest leads the next one while the
        // others of this batch are being woken.
        self.leader.store(false, Ordering::SeqCst);
        if let Some((_, next)) = self.queue.lock().map_err(|_| lock_err())?.first() {
            match (&next.waiter, self.committer()) {
                // A task waits for the committer, which leads next.
                (Waiter::Task(_), Some(committer)) => committer.unpark(),
                (waiter, _) => waiter.wake(),
            }
        }
        // The root of the wake tree; each woken waiter wakes its children.
        if let Some(root) = slots.first() {
            if Arc::ptr_eq(root, slot) {
                root.wake_children();
            } else {
                root.waiter.wake();
            }
        }
        Ok(())
    }
}

/// A submission of `GroupCommit::submit_async`: resolves once the item is durable.
pub struct Durable<'a, T> {
    group: &'a GroupCommit<T>,
    item: Option<T>,
    slot: Option<Arc<Slot>>,
    commit: &'a Commit<'a, T>,
}

/// What commits a batch, durably (shared by the tasks that wait on it).
pub type Commit<'a, T> = dyn Fn(Vec<T>) -> Result<()> + Sync + 'a;

impl<T> Drop for Durable<'_, T> {
    /// A submission dropped before it completed (its task was cancelled) still sees its item
    /// committed before it goes: a leader may be about to hand the next batch to this task,
    /// whose waker no longer runs anything.
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            while let Ok(None) = self.group.progress(slot, self.commit) {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
    }
}

impl<T> Durable<'_, T> {
    /// Queues the item now, before the first poll, so it may join a commit under way while the
    /// caller does other work. No effect once queued.
    pub fn enqueue(&mut self) -> Result<()> {
        let Some(item) = self.item.take() else {
            return Ok(());
        };
        // No waker yet: the first poll sets it before it checks the slot.
        let slot = Slot::new(Waiter::Task(Arc::new(Mutex::new(None))));
        self.group
            .queue
            .lock()
            .map_err(|_| lock_err())?
            .push((item, slot.clone()));
        self.slot = Some(slot);
        if let Some(committer) = self.group.committer() {
            committer.unpark();
        }
        Ok(())
    }
}

impl<T> std::fmt::Debug for Durable<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable").field("slot", &self.slot).finish()
    }
}

impl<T: Unpin> Future for Durable<'_, T> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        let slot = match (&this.slot, this.item.take()) {
            (Some(slot), _) => {
                // The waker may have changed since the last poll; set before any check, so a
                // settlement after the check still wakes this task.
                if let Waiter::Task(w) = &slot.waiter
                    && let Ok(mut w) = w.lock()
                {
                    w.replace(cx.waker().clone());
                }
                slot.clone()
            }
            (None, Some(item)) => {
                let slot = Slot::new(Waiter::Task(Arc::new(Mutex::new(Some(cx.waker().clone())))));
                match this.group.queue.lock() {
                    Ok(mut q) => q.push((item, slot.clone())),
                    Err(_) => return Poll::Ready(Err(lock_err())),
                }
                this.slot = Some(slot.clone());
                slot
            }
            (None, None) => return Poll::Ready(Err(Error::Storage("polled after its end".into()))),
        };
        if let Some(committer) = this.group.committer() {
            // The committer leads: this task only waits (woken by its batch's wake tree).
            committer.unpark();
            if let Some(outcome) = slot.outcome() {
                slot.wake_children();
                this.slot = None;
                return Poll::Ready(outcome);
            }
            return Poll::Pending;
        }
        let done = match this.group.progress(&slot, this.commit) {
            Ok(Some(outcome)) => outcome,
            Ok(None) => return Poll::Pending,
            Err(e) => Err(e),
        };
        this.slot = None;
        Poll::Ready(done)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn chain_detects_removal_reorder_alteration() {
        let entries: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10]).collect();
        let mut prev = [0u8; 32];
        let mut rows = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            prev = chain_hash(&[3; 32], e, &prev);
            rows.push((i as u64 + 1, prev, e.as_slice()));
        }
        let head = (5, prev);
        let o = SiteId(1);
        assert_eq!(
            verify_chain(&[3; 32], o, rows.iter().cloned(), head).ok(),
            Some(5)
        );
        let mut removed = rows.clone();
        removed.remove(2);
        assert!(verify_chain(&[3; 32], o, removed.into_iter(), head).is_err());
        let mut reordered = rows.clone();
        reordered.swap(1, 2);
        assert!(verify_chain(&[3; 32], o, reordered.into_iter(), head).is_err());
        let altered_bytes = vec![9u8; 10];
        let mut altered = rows.clone();
        altered[3].2 = &altered_bytes;
        assert!(verify_chain(&[3; 32], o, altered.into_iter(), head).is_err());
        let mut truncated = rows.clone();
        truncated.pop();
        assert!(verify_chain(&[3; 32], o, truncated.into_iter(), head).is_err());
    }

    #[test]
    fn group_commit_batches_concurrent_submitters() {
        let gc = Arc::new(GroupCommit::<u32>::default());
        let commits = Arc::new(AtomicUsize::new(0));
        let committed = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..16u32)
            .map(|i| {
                let (gc, commits, committed) = (gc.clone(), commits.clone(), committed.clone());
                std::thread::spawn(move || {
                    for j in 0..50u32 {
                        gc.submit(i * 1000 + j, &|batch| {
                            commits.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            committed.lock().expect("lock").extend(batch);
                            Ok(())
                        })
                        .expect("commit");
                        // Our item is durable when submit returns.
                        assert!(committed.lock().expect("lock").contains(&(i * 1000 + j)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(committed.lock().expect("lock").len(), 800);
        assert!(
            commits.load(Ordering::SeqCst) < 800,
            "some commits were shared"
        );
    }

    #[test]
    fn group_commit_never_loses_a_waiter() {
        // Many threads and an instant commit: the case where wake-ups race settlements.
        let gc = Arc::new(GroupCommit::<u32>::default());
        let threads: Vec<_> = (0..64u32)
            .map(|i| {
                let gc = gc.clone();
                std::thread::spawn(move || {
                    for j in 0..300u32 {
                        gc.submit(i * 1000 + j, &|_| Ok(())).expect("commit");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
    }

    /// Runs a future to its end on this thread (a waker that unparks it).
    pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
        struct Unpark(Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
                return out;
            }
            std::thread::park_timeout(std::time::Duration::from_millis(100));
        }
    }

    fn async_submitters(with_committer: bool) {
        let gc = Arc::new(GroupCommit::<u32>::default());
        let commits = Arc::new(AtomicUsize::new(0));
        let committed = Arc::new(Mutex::new(Vec::new()));
        let commit = {
            let (commits, committed) = (commits.clone(), committed.clone());
            Arc::new(move |batch: Vec<u32>| {
                commits.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_micros(200));
                committed.lock().expect("lock").extend(batch);
                Ok(())
            })
        };
        let running = Arc::new(AtomicBool::new(true));
        let committer = with_committer.then(|| {
            let (gc, commit, running) = (gc.clone(), commit.clone(), running.clone());
            std::thread::spawn(move || gc.run_committer(&*commit, &running))
        });
        let threads: Vec<_> = (0..16u32)
            .map(|i| {
                let (gc, commit, committed) = (gc.clone(), commit.clone(), committed.clone());
                std::thread::spawn(move || {
                    for j in 0..50u32 {
                        let mut durable = gc.submit_async(i * 1000 + j, &*commit);
                        if j % 2 == 1 {
                            // Queued before its first poll, as reads do before opening a body.
                            durable.enqueue().expect("enqueue");
                        }
                        block_on(durable).expect("commit");
                        assert!(committed.lock().expect("lock").contains(&(i * 1000 + j)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        running.store(false, Ordering::SeqCst);
        if let Some(c) = committer {
            c.thread().unpark();
            c.join().expect("committer");
        }
        assert_eq!(committed.lock().expect("lock").len(), 800);
        assert!(
            commits.load(Ordering::SeqCst) < 800,
            "some commits were shared"
        );
    }

    #[test]
    fn async_submitters_share_commits_and_complete_only_once_durable() {
        async_submitters(false);
        async_submitters(true);
    }

    #[test]
    fn an_enqueued_submission_is_committed_before_its_first_poll() {
        let gc = Arc::new(GroupCommit::<u32>::default());
        let committed = Arc::new(Mutex::new(Vec::new()));
        let commit = {
            let committed = committed.clone();
            Arc::new(move |batch: Vec<u32>| {
                committed.lock().expect("lock").extend(batch);
                Ok(())
            })
        };
        let running = Arc::new(AtomicBool::new(true));
        let committer = {
            let (gc, commit, running) = (gc.clone(), commit.clone(), running.clone());
            std::thread::spawn(move || gc.run_committer(&*commit, &running))
        };
        while gc.committer().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut durable = gc.submit_async(7, &*commit);
        durable.enqueue().expect("enqueue");
        durable.enqueue().expect("a second call changes nothing");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !committed.lock().expect("lock").contains(&7) {
            assert!(std::time::Instant::now() < deadline, "never committed");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(block_on(durable).is_ok());
        assert_eq!(*committed.lock().expect("lock"), vec![7], "committed once");
        running.store(false, Ordering::SeqCst);
        committer.thread().unpark();
        committer.join().expect("committer");
    }

    #[test]
    fn a_cancelled_async_submission_is_still_committed_and_stalls_nobody() {
        let gc = Arc::new(GroupCommit::<u32>::default());
        let committed = Arc::new(Mutex::new(Vec::new()));
        // A thread leads a slow batch.
        let slow = {
            let (gc, committed) = (gc.clone(), committed.clone());
            std::thread::spawn(move || {
                gc.submit(1, &|b| {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    committed.lock().expect("lock").extend(b);
                    Ok(())
                })
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(10));
        let record = |b: Vec<u32>| {
            committed.lock().expect("lock").extend(b);
            Ok(())
        };
        let mut pending = Box::pin(gc.submit_async(2, &record));
        let waker = Waker::noop();
        assert!(
            pending
                .as_mut()
                .poll(&mut Context::from_waker(waker))
                .is_pending(),
            "the leader is busy"
        );
        drop(pending);
        assert!(
            committed.lock().expect("lock").contains(&2),
            "committed before it went"
        );
        assert!(slow.join().expect("thread").is_ok());
        assert!(
            gc.submit(3, &record).is_ok(),
            "nobody waits on the cancelled task"
        );
    }

    #[test]
    fn a_panicking_commit_fails_its_batch_and_frees_the_leadership() {
        let gc = GroupCommit::<u32>::default();
        let r = gc.submit(1, &|_| panic!("disk on fire"));
        assert!(r.is_err());
        assert!(gc.submit(2, &|_| Ok(())).is_ok());
    }

    #[test]
    fn group_commit_reports_failure_to_the_batch() {
        let gc = GroupCommit::<u32>::default();
        let r = gc.submit(1, &|_| Err(Error::Storage("disk full".into())));
        assert!(r.is_err());
        assert!(gc.submit(2, &|_| Ok(())).is_ok());
    }
}
