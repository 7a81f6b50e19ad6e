//! Per-role memory accounting: how much of the large-buffer memory alice, bob, the dealer and
//! the data owners hold, measured inside one process.
//!
//! **How it is measured.** An application that wants the figures installs
//! [`CountingAllocator`] as its global allocator (the `secure-serving` binary and the examples
//! do). Every thread of a session carries a role: the party threads and their pool workers are
//! alice or bob, the dealer's threads are the dealer, and the caller's thread is the owner while
//! it runs a data owner's step (the model owner's and the client's sharing). Each allocation of
//! at least [`TRACK_MIN_BYTES`] is recorded with the role of the thread that made it, until it
//! is freed (by whichever thread); the current and the peak live bytes are kept per role and for
//! all roles together. Smaller allocations are not counted (they are not what the figures are
//! about: weights, shares, material, messages). A message is counted for its sender until the
//! receiver frees it. Allocations made on threads without a role (rayon workers, the host
//! program's own buffers) are counted as [`Role::Other`].
//!
//! The peaks are live bytes handed out by the allocator, not resident pages: freed memory that
//! the allocator keeps for reuse is not counted. [`process_peak_rss_bytes`] reads the kernel's
//! figure for the whole process (`VmHWM`) to set beside them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Allocations of at least this many bytes are counted.
pub const TRACK_MIN_BYTES: usize = 1 << 20;

/// Who a thread works for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    /// Threads without a role (rayon workers, the host program).
    Other = 0,
    /// Compute party 0 (its thread and its pool workers).
    Alice = 1,
    /// Compute party 1.
    Bob = 2,
    /// The crypto provider.
    Dealer = 3,
    /// The data owners: the model owner and the client (the caller's thread while it shares).
    Owner = 4,
}

impl Role {
    /// All roles, in report order.
    pub const ALL: [Role; 5] = [
        Role::Alice,
        Role::Bob,
        Role::Dealer,
        Role::Owner,
        Role::Other,
    ];

    fn from_u8(v: u8) -> Role {
        match v {
            1 => Role::Alice,
            2 => Role::Bob,
            3 => Role::Dealer,
            4 => Role::Owner,
            _ => Role::Other,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Other => "other",
            Role::Alice => "alice",
            Role::Bob => "bob",
            Role::Dealer => "dealer",
            Role::Owner => "owner",
        }
    }
}

thread_local! {
    static ROLE: Cell<u8> = const { Cell::new(0) };
}

/// Set the role of the current thread (for the rest of its life).
pub fn set_thread_role(role: Role) {
    ROLE.with(|r| r.set(role as u8));
}

/// The current thread's role.
pub fn thread_role() -> Role {
    Role::from_u8(ROLE.try_with(|r| r.get()).unwrap_or(0))
}

/// Runs the current thread as `role` until dropped, then restores the previous role.
pub struct RoleScope {
    prev: Role,
}

impl RoleScope {
    /// Enter `role` on this thread.
    pub fn enter(role: Role) -> RoleScope {
        let prev = thread_role();
        set_thread_role(role);
        RoleScope { prev }
    }
}

impl Drop for RoleScope {
    fn drop(&mut self) {
        set_thread_role(self.prev);
    }
}

const ROLES: usize = 5;
const SLOTS: usize = 1 << 14;

static CURRENT: [AtomicU64; ROLES] = [const { AtomicU64::new(0) }; ROLES];
static PEAK: [AtomicU64; ROLES] = [const { AtomicU64::new(0) }; ROLES];
static TOTAL: AtomicU64 = AtomicU64::new(0);
static TOTAL_PEAK: AtomicU64 = AtomicU64::new(0);
static AT_RESET: [AtomicU64; ROLES] = [const { AtomicU64::new(0) }; ROLES];
static TOTAL_AT_RESET: AtomicU64 = AtomicU64::new(0);
static UNTRACKED: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicUsize = AtomicUsize::new(0);

/// Live large allocations: address, size and role, open addressing (no allocation inside).
struct Table {
    addr: [usize; SLOTS],
    size: [usize; SLOTS],
    role: [u8; SLOTS],
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    addr: [0; SLOTS],
    size: [0; SLOTS],
    role: [0; SLOTS],
});

fn slot_of(addr: usize) -> usize {
    ((addr >> 12).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 50) & (SLOTS - 1)
}

fn record(addr: usize, size: usize) {
    let role = thread_role() as u8;
    let Ok(mut t) = TABLE.lock() else { return };
    let mut i = slot_of(addr);
    for _ in 0..SLOTS {
        if t.addr[i] == 0 {
            t.addr[i] = addr;
            t.size[i] = size;
            t.role[i] = role;
            drop(t);
            let r = role as usize;
            let now = CURRENT[r].fetch_add(size as u64, Ordering::Relaxed) + size as u64;
            PEAK[r].fetch_max(now, Ordering::Relaxed);
            let all = TOTAL.fetch_add(size as u64, Ordering::Relaxed) + size as u64;
            TOTAL_PEAK.fetch_max(all, Ordering::Relaxed);
            return;
        }
        i = (i + 1) & (SLOTS - 1);
    }
    UNTRACKED.fetch_add(1, Ordering::Relaxed);
}

fn forget(addr: usize) {
    let Ok(mut t) = TABLE.lock() else { return };
    let mut i = slot_of(addr);
    for _ in 0..SLOTS {
        if t.addr[i] == addr {
            let (size, role) = (t.size[i] as u64, t.role[i] as usize);
            // Delete with backward shift so later probes still find their entries.
            let mut hole = i;
            let mut j = (i + 1) & (SLOTS - 1);
            while t.addr[j] != 0 {
                let home = slot_of(t.addr[j]);
                let moves = if hole <= j {
                    home <= hole || home > j
                } else {
                    home <= hole && home > j
                };
                if moves {
                    t.addr[hole] = t.addr[j];
                    t.size[hole] = t.size[j];
                    t.role[hole] = t.role[j];
                    hole = j;
                }
                j = (j + 1) & (SLOTS - 1);
            }
            t.addr[hole] = 0;
            drop(t);
            CURRENT[role].fetch_sub(size, Ordering::Relaxed);
            TOTAL.fetch_sub(size, Ordering::Relaxed);
            return;
        }
        if t.addr[i] == 0 {
            return;
        }
        i = (i + 1) & (SLOTS - 1);
    }
}

/// A global allocator that counts large allocations per thread role (see the module docs).
///
/// Install it in an application with
/// `#[global_allocator] static ALLOC: engine::memory::CountingAllocator = engine::memory::CountingAllocator;`
pub struct CountingAllocator;

// SAFETY: every call is forwarded unchanged to the system allocator; the bookkeeping around it
// never allocates (a fixed table behind a mutex) and never touches the returned memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(1, Ordering::Relaxed);
        let p = System.alloc(layout);
        if !p.is_null() && layout.size() >= TRACK_MIN_BYTES {
            record(p as usize, layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(1, Ordering::Relaxed);
        let p = System.alloc_zeroed(layout);
        if !p.is_null() && layout.size() >= TRACK_MIN_BYTES {
            record(p as usize, layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= TRACK_MIN_BYTES {
            forget(ptr as usize);
        }
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if layout.size() >= TRACK_MIN_BYTES {
                forget(ptr as usize);
            }
            if new_size >= TRACK_MIN_BYTES {
                record(p as usize, new_size);
            }
        }
        p
    }
}

/// Peak and current live bytes of one role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoleBytes {
    /// Highest live bytes since the last [`reset_peaks`].
    pub peak: u64,
    /// Live bytes when [`reset_peaks`] was last called (0 before).
    pub at_reset: u64,
    /// Live bytes now.
    pub current: u64,
}

/// What the counting allocator saw.
#[derive(Clone, Debug, Default)]
pub struct MemoryReport {
    /// Per role, in [`Role::ALL`] order.
    pub roles: Vec<(Role, RoleBytes)>,
    /// Highest live bytes of all roles together (at one moment).
    pub total_peak: u64,
    /// Live bytes of all roles together when [`reset_peaks`] was last called.
    pub total_at_reset: u64,
    /// Allocations the table had no room for (not counted; 0 in practice).
    pub untracked: usize,
}

impl MemoryReport {
    /// The figures of one role.
    pub fn role(&self, role: Role) -> RoleBytes {
        self.roles
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, b)| *b)
            .unwrap_or_default()
    }
}

/// The counts so far, or `None` when [`CountingAllocator`] is not the global allocator.
pub fn report() -> Option<MemoryReport> {
    if INSTALLED.load(Ordering::Relaxed) == 0 {
        return None;
    }
    Some(MemoryReport {
        roles: Role::ALL
            .iter()
            .map(|&r| {
                (
                    r,
                    RoleBytes {
                        peak: PEAK[r as usize].load(Ordering::Relaxed),
                        at_reset: AT_RESET[r as usize].load(Ordering::Relaxed),
                        current: CURRENT[r as usize].load(Ordering::Relaxed),
                    },
                )
            })
            .collect(),
        total_peak: TOTAL_PEAK.load(Ordering::Relaxed),
        total_at_reset: TOTAL_AT_RESET.load(Ordering::Relaxed),
        untracked: UNTRACKED.load(Ordering::Relaxed),
    })
}

/// Start new peaks from the current live bytes (to measure one phase).
pub fn reset_peaks() {
    for r in 0..ROLES {
        let now = CURRENT[r].load(Ordering::Relaxed);
        PEAK[r].store(now, Ordering::Relaxed);
        AT_RESET[r].store(now, Ordering::Relaxed);
    }
    let now = TOTAL.load(Ordering::Relaxed);
    TOTAL_PEAK.store(now, Ordering::Relaxed);
    TOTAL_AT_RESET.store(now, Ordering::Relaxed);
}

/// The kernel's peak resident set of this process (`VmHWM`), where it reports one (Linux).
pub fn process_peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_insert_and_delete_keep_probing_consistent() {
        // Drive the table directly: insert 40 entries, delete them in an interleaved order.
        let base = 1usize << 40;
        let addrs: Vec<usize> = (0..40).map(|i| base + i * (SLOTS << 12)).collect();
        let _scope = RoleScope::enter(Role::Dealer);
        let before = CURRENT[Role::Dealer as usize].load(Ordering::Relaxed);
        for &a in &addrs {
            record(a, 1 << 20);
        }
        let mid = CURRENT[Role::Dealer as usize].load(Ordering::Relaxed);
        assert!(mid >= before + (40 << 20));
        for &a in addrs.iter().step_by(2) {
            forget(a);
        }
        for &a in addrs.iter().skip(1).step_by(2) {
            forget(a);
        }
        let t = TABLE.lock().unwrap();
        assert!(addrs.iter().all(|a| !t.addr.contains(a)));
    }
}
