//! Preprocessing ahead of requests: a bounded pool of material per model and batch shape,
//! produced in the background.
//!
//! A pool is opened for one list of material specs (the whole preprocessing of one request: a
//! model's forward pass at one batch size, plus whatever the request adds). Each compute party
//! then runs a worker thread that produces *entries* — all of a request's material, expanded
//! from the party's seed, corrected by the dealer (bob, over his second dealer link) and
//! precomputed (`M_i = a_i·F + c_i`) — into a bounded queue. Entry `j` of pool `p` uses its
//! own stream numbers ([`pool_streams`]), disjoint from on-demand material and from every other
//! entry, so both parties expand the same randomness for it without talking.
//!
//! **Use.** A request asks [`Party::preprocess_pooled`]: both parties tell each other, in one
//! small exchange, which entry they are at and whether it is ready. Only when both have the same
//! entry ready is it used; otherwise both fall back to on-demand material for this request
//! (and a party that is behind skips the entries the other has already spent). So a request
//! never waits for the pool, and nothing is ever used twice: an entry leaves the pool when it
//! is taken, and if the request then fails, [`crate::Session::run`] drops the material it took.
//!
//! **Bounds.** A pool of capacity `c` holds at most `c` entries per party (ready or in
//! production). It is dropped — workers stopped, material freed — by
//! [`crate::Session::close_pool`] or when its model is deleted
//! ([`crate::Session::delete_model`]); the material it holds is counted in the memory report
//! under the party that owns it, and [`PoolStatus::bytes_ready`] tells how much it is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use kernels::Tensor;

use crate::dealer::MaterialSpec;
use crate::error::{EngineError, Result};
use crate::memory::{set_thread_role, Role};
use crate::party::{request_corrections, MaterialMaker, Party, Prepared, SharedLink};
use crate::session::Session;

/// Run `work` on a thread pool of its own whose threads have the lowest scheduling priority
/// (nice 19 on Linux) and carry `role`: background preprocessing then only uses the CPU time
/// that the online phase (normal priority, rayon's global pool) leaves idle, so a request
/// served from the pool is not slowed down by the production of the next entries.
pub(crate) fn in_background<R: Send>(role: Role, work: impl FnOnce() -> R + Send) -> R {
    set_thread_role(role);
    lower_thread_priority();
    let threads = rayon::current_num_threads();
    match rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("{}-bg-{i}", role.name()))
        .start_handler(move |_| {
            set_thread_role(role);
            lower_thread_priority();
        })
        .build()
    {
        Ok(tp) => tp.install(work),
        // No separate threads: the work still runs, on the global pool.
        Err(_) => work(),
    }
}

/// Give the calling thread the lowest scheduling priority (a no-op where unsupported).
fn lower_thread_priority() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: setpriority only changes the calling thread's nice value (Linux applies
    // PRIO_PROCESS with id 0 to the calling thread); it touches no memory.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}

/// Stream numbers of pool material have this bit set (on-demand material counts from 0).
pub(crate) const POOL_STREAM_BIT: u64 = 1 << 63;

/// Streams each pool has (its entries' items, numbered from the pool's first stream).
pub(crate) const POOL_STREAMS_PER_POOL: u64 = 1 << 32;

/// Pool ids that have streams of their own.
const POOL_IDS: u64 = 1 << 31;

/// Stream `local` of pool `pool` (both in range).
pub(crate) fn pool_stream(pool: u64, local: u64) -> u64 {
    POOL_STREAM_BIT | pool << 32 | local
}

/// The pool and local stream number of pool stream `stream`; `None` for an on-demand stream.
pub(crate) fn split_pool_stream(stream: u64) -> Option<(u64, u64)> {
    (stream & POOL_STREAM_BIT != 0).then_some((
        (stream & !POOL_STREAM_BIT) >> 32,
        stream & (POOL_STREAMS_PER_POOL - 1),
    ))
}

/// The first stream number of entry `seq` of pool `pool` whose entries hold `per_entry` items.
pub fn pool_streams(pool: u64, seq: u64, per_entry: usize) -> Result<u64> {
    let local = seq
        .checked_mul(per_entry as u64)
        .filter(|&l| l + per_entry as u64 <= POOL_STREAMS_PER_POOL)
        .ok_or_else(|| EngineError::Invalid(format!("pool {pool} has used all its streams")))?;
    if pool >= POOL_IDS {
        return Err(EngineError::Invalid(format!("pool id {pool} is too large")));
    }
    Ok(pool_stream(pool, local))
}

/// A handle to a material pool (the same id on both parties).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaterialPool {
    id: u64,
    specs: Vec<MaterialSpec>,
    capacity: usize,
}

impl MaterialPool {
    /// The pool id.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The material of one entry, in consumption order.
    pub fn specs(&self) -> &[MaterialSpec] {
        &self.specs
    }
    /// Entries each party holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Fixed operands this pool's material refers to.
    fn fixed_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .specs
            .iter()
            .filter_map(|s| match s {
                MaterialSpec::FixedTriple { fixed_id, .. } => Some(*fixed_id),
                _ => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// One party's view of a pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// Entries taken by requests.
    pub used: u64,
    /// Requests that found no common ready entry and used on-demand material.
    pub fallbacks: u64,
    /// Entries skipped because the other party had spent them in a failed request.
    pub skipped: u64,
    /// Bytes of material held ready (produced, not yet taken).
    pub bytes_ready: u64,
    /// The entry the next request will look for.
    pub next_entry: u64,
    /// Whether that entry is ready in this party's hands.
    pub ready: bool,
}

/// A produced entry.
struct Entry {
    seq: u64,
    items: Vec<Prepared>,
    bytes: u64,
}

/// One party's pool: the worker and the queue it fills.
pub(crate) struct PartyPool {
    spec: MaterialPool,
    rx: Option<Receiver<Result<Entry>>>,
    head: Option<Entry>,
    next_seq: u64,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
    bytes_ready: Arc<AtomicU64>,
    status: PoolStatus,
}

impl PartyPool {
    /// The ready head entry, if the worker has produced it (never waits). Entries below
    /// `next_seq` (spent by the other party in a failed request) are dropped on the way.
    fn poll(&mut self) -> Option<u64> {
        loop {
            if let Some(h) = &self.head {
                if h.seq >= self.next_seq {
                    return Some(h.seq);
                }
                let h = self.head.take().expect("head");
                self.bytes_ready.fetch_sub(h.bytes, Ordering::Relaxed);
                self.status.skipped += 1;
                continue;
            }
            let rx = self.rx.as_ref()?;
            match rx.try_recv() {
                Ok(Ok(e)) => self.head = Some(e),
                // A failed worker ends the pool: requests fall back to on-demand material.
                Ok(Err(_)) | Err(TryRecvError::Disconnected) => {
                    self.rx = None;
                    return None;
                }
                Err(TryRecvError::Empty) => return None,
            }
        }
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.rx = None; // unblocks a worker waiting for room
        self.head = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        self.bytes_ready.store(0, Ordering::Relaxed);
    }
}

impl Drop for PartyPool {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The worker: produce entries `0, 1, 2, ...` until stopped or the pool is dropped.
#[allow(clippy::too_many_arguments)]
fn produce(
    pool: MaterialPool,
    maker: MaterialMaker,
    link: Option<SharedLink>,
    fixed: HashMap<u64, Tensor>,
    tx: std::sync::mpsc::SyncSender<Result<Entry>>,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    bytes_ready: Arc<AtomicU64>,
) {
    let role = if maker.index == 0 {
        Role::Alice
    } else {
        Role::Bob
    };
    in_background(role, move || {
        produce_entries(pool, maker, link, fixed, tx, stop, paused, bytes_ready)
    })
}

#[allow(clippy::too_many_arguments)]
fn produce_entries(
    pool: MaterialPool,
    maker: MaterialMaker,
    link: Option<SharedLink>,
    fixed: HashMap<u64, Tensor>,
    tx: std::sync::mpsc::SyncSender<Result<Entry>>,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    bytes_ready: Arc<AtomicU64>,
) {
    for seq in 0.. {
        while paused.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let made = (|| -> Result<Entry> {
            let first = pool_streams(pool.id, seq, pool.specs.len())?;
            let corrections = match &link {
                Some(l) => {
                    let mut net = l
                        .lock()
                        .map_err(|_| EngineError::Protocol("pool link poisoned".into()))?;
                    Some(request_corrections(net.as_mut(), first, &pool.specs)?)
                }
                None => None,
            };
            let items = maker.make(first, &pool.specs, corrections.as_deref(), &fixed)?;
            let bytes = items.iter().map(Prepared::bytes).sum();
            Ok(Entry { seq, items, bytes })
        })();
        let failed = made.is_err();
        if let Ok(e) = &made {
            bytes_ready.fetch_add(e.bytes, Ordering::Relaxed);
        }
        let bytes = made.as_ref().map(|e| e.bytes).unwrap_or(0);
        if tx.send(made).is_err() {
            bytes_ready.fetch_sub(bytes, Ordering::Relaxed);
            return;
        }
        if failed {
            return;
        }
    }
}

impl Party {
    /// Start this party's side of `pool` (a worker thread producing its entries).
    pub(crate) fn open_pool(&mut self, pool: MaterialPool, paused: bool) -> Result<()> {
        if pool.capacity == 0 {
            return Err(EngineError::Invalid(
                "a material pool needs a capacity of at least 1".into(),
            ));
        }
        let link =
            if self.index() == 1 {
                Some(self.pool_link().ok_or_else(|| {
                    EngineError::Invalid("bob has no pool link to the dealer".into())
                })?)
            } else {
                None
            };
        let fixed = self.fixed_publics(&pool.fixed_ids())?;
        // The worker holds one entry while it waits for room: capacity - 1 queued.
        let (tx, rx) = sync_channel(pool.capacity - 1);
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(paused));
        let bytes_ready = Arc::new(AtomicU64::new(0));
        let (p, maker, st) = (pool.clone(), self.maker(), stop.clone());
        let (pa, br) = (paused.clone(), bytes_ready.clone());
        let worker = std::thread::Builder::new()
            .name(format!("{}-pool", self.id()))
            .spawn(move || produce(p, maker, link, fixed, tx, st, pa, br))
            .map_err(|e| EngineError::Invalid(format!("cannot spawn pool worker: {e}")))?;
        self.pools.insert(
            pool.id,
            PartyPool {
                spec: pool,
                rx: Some(rx),
                head: None,
                next_seq: 0,
                stop,
                paused,
                worker: Some(worker),
                bytes_ready,
                status: PoolStatus::default(),
            },
        );
        Ok(())
    }

    /// Queue the material of one request from `pool` when both parties have the same entry
    /// ready; otherwise fetch it on demand. One small exchange with the peer either way.
    /// Returns whether pool material was used.
    pub fn preprocess_pooled(&mut self, pool: &MaterialPool) -> Result<bool> {
        let p = self
            .pools
            .get_mut(&pool.id)
            .ok_or_else(|| EngineError::Invalid(format!("no material pool {}", pool.id)))?;
        let ready = p.poll();
        let mine = p.next_seq;
        let msg = vec![mine, ready.is_some() as u64];
        let theirs = self.exchange("pool", msg)?;
        let (their_seq, their_ready) = (theirs[0], theirs[1] == 1);
        let p = self.pools.get_mut(&pool.id).expect("looked up above");
        if ready.is_some() && their_ready && their_seq == mine {
            let e = p.head.take().expect("ready head");
            p.bytes_ready.fetch_sub(e.bytes, Ordering::Relaxed);
            p.next_seq = e.seq + 1;
            p.status.used += 1;
            p.status.next_entry = p.next_seq;
            self.queue_prepared(e.items);
            return Ok(true);
        }
        // The peer spent entries this party still holds (a failed request): skip them.
        p.next_seq = p.next_seq.max(their_seq);
        p.status.fallbacks += 1;
        p.status.next_entry = p.next_seq;
        let specs = p.spec.specs.clone();
        self.preprocess(&specs)?;
        Ok(false)
    }

    /// This party's view of `pool`.
    pub fn pool_status(&mut self, pool: &MaterialPool) -> Result<PoolStatus> {
        let p = self
            .pools
            .get_mut(&pool.id)
            .ok_or_else(|| EngineError::Invalid(format!("no material pool {}", pool.id)))?;
        let ready = p.poll().is_some();
        Ok(PoolStatus {
            bytes_ready: p.bytes_ready.load(Ordering::Relaxed),
            ready,
            ..p.status
        })
    }

    /// Pause or resume `pool`'s worker (an entry in production is finished first).
    pub(crate) fn pause_pool(&mut self, id: u64, paused: bool) -> Result<()> {
        let p = self
            .pools
            .get(&id)
            .ok_or_else(|| EngineError::Invalid(format!("no material pool {id}")))?;
        p.paused.store(paused, Ordering::Relaxed);
        Ok(())
    }

    /// Stop `pool`'s worker and free its material.
    pub(crate) fn close_pool(&mut self, id: u64) {
        self.pools.remove(&id);
    }

    /// Close every pool whose material refers to one of the fixed operands `ids`.
    pub(crate) fn close_pools_of(&mut self, ids: &[u64]) {
        self.pools
            .retain(|_, p| !p.spec.fixed_ids().iter().any(|f| ids.contains(f)));
    }
}

impl Session {
    /// Open a pool that produces the material `specs` (one request's worth per entry) ahead, in
    /// the background, keeping at most `capacity` entries per party.
    pub fn open_pool(&mut self, specs: Vec<MaterialSpec>, capacity: usize) -> Result<MaterialPool> {
        self.open_pool_with(specs, capacity, false)
    }

    /// [`Session::open_pool`], with the workers paused from the start when `paused` (they
    /// produce nothing until [`Session::pause_pool`] resumes them).
    pub fn open_pool_with(
        &mut self,
        specs: Vec<MaterialSpec>,
        capacity: usize,
        paused: bool,
    ) -> Result<MaterialPool> {
        if capacity == 0 {
            return Err(EngineError::Invalid(
                "a material pool needs a capacity of at least 1".into(),
            ));
        }
        let [a, b] = self.run(|p| Ok(p.allocate_id()))?;
        let id = crate::session::agreed_id(a, b)?;
        let pool = MaterialPool {
            id,
            specs,
            capacity,
        };
        let p2 = pool.clone();
        self.run(move |p| p.open_pool(p2.clone(), paused))?;
        Ok(pool)
    }

    /// Pause (`true`) or resume (`false`) a pool's workers on both parties.
    pub fn pause_pool(&mut self, pool: &MaterialPool, paused: bool) -> Result<()> {
        let id = pool.id;
        self.run(move |p| p.pause_pool(id, paused))?;
        Ok(())
    }

    /// Stop a pool's workers and drop its material on both parties.
    pub fn close_pool(&mut self, pool: &MaterialPool) -> Result<()> {
        let id = pool.id;
        self.run(move |p| {
            p.close_pool(id);
            Ok(())
        })?;
        Ok(())
    }

    /// Both parties' view of a pool.
    pub fn pool_status(&mut self, pool: &MaterialPool) -> Result<[PoolStatus; 2]> {
        let pool = pool.clone();
        self.run(move |p| p.pool_status(&pool))
    }
}
