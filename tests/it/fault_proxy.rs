//! A UDP fault proxy on 127.0.0.1 between sites and a host: seeded loss, delay, duplication,
//! reordering, a line rate with a bounded bottleneck queue (an emulated rural link: each
//! datagram occupies the line for its size plus the IPv4 and UDP headers, and one that finds
//! more than the queue's bytes waiting is dropped) and partitions (a cut after so many bytes,
//! until healed), with the bytes it forwards each way counted. `carnet-bench link` uses it too.
//! A site enrolled with the proxy's address as its host address talks to the host through it.
//!
//! Each client address gets its own upstream socket (as a NAT would); `rebind_after` gives it a
//! new one (a new source port, as a NAT rebinding or a site moving from 4G to Wi-Fi shows the
//! host a new address). Datagrams wait in a queue
//! ordered by delivery time; one thread per direction receives, one thread delivers. Everything
//! stops when the proxy is dropped.

use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the link does to datagrams.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Seed of the random choices (the same seed, the same faults for the same traffic).
    pub seed: u64,
    /// Share of datagrams dropped, 0.0 to 1.0.
    pub loss: f64,
    /// One-way delay.
    pub delay: Duration,
    /// Share of datagrams delivered twice.
    pub duplicate: f64,
    /// Extra random delay, up to this, so datagrams overtake each other.
    pub reorder: Duration,
    /// Bytes per second each way (0: no cap).
    pub bandwidth: u64,
    /// With a `bandwidth`: the bytes that may wait for the line each way (the bottleneck's
    /// buffer); a datagram arriving when more wait is dropped. 0: no bound.
    pub queue_bytes: u64,
}

/// Bytes of the IPv4 and UDP headers a datagram carries on the line besides its payload.
pub const HEADERS: u64 = 28;

/// A small seeded generator (xorshift64*): reproducible faults without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A datagram waiting for its delivery time.
struct Pending {
    at: Instant,
    order: u64,
    to_host: bool,
    client: SocketAddr,
    bytes: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    /// Earliest first (the heap is a max-heap).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

struct Shared {
    faults: Mutex<Faults>,
    rng: Mutex<Rng>,
    queue: Mutex<BinaryHeap<Pending>>,
    wake: Condvar,
    /// Per direction, when the link is next free (bandwidth cap).
    free_at: Mutex<[Instant; 2]>,
    partitioned: AtomicBool,
    /// Partition once this many bytes went toward the host.
    cut_after: AtomicU64,
    to_host_bytes: AtomicU64,
    to_site_bytes: AtomicU64,
    /// Datagrams dropped because the bottleneck queue was full.
    overflowed: AtomicU64,
    /// Give every client a new upstream socket once this many bytes went toward the host.
    rebind_at: AtomicU64,
    /// How many times the clients' upstream sockets were replaced.
    rebinds: AtomicU64,
    order: AtomicU64,
    stop: AtomicBool,
}

/// The proxy; dropping it stops it.
pub struct FaultProxy {
    /// Where sites connect (give it as the host address when enrolling).
    pub address: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy on 127.0.0.1 forwarding to `host` with `faults`.
    pub fn start(host: SocketAddr, faults: Faults) -> FaultProxy {
        let front = UdpSocket::bind("127.0.0.1:0").expect("proxy socket");
        front
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let address = front.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            faults: Mutex::new(faults),
            rng: Mutex::new(Rng(faults.seed | 1)),
            queue: Mutex::new(BinaryHeap::new()),
            wake: Condvar::new(),
            free_at: Mutex::new([Instant::now(); 2]),
            partitioned: AtomicBool::new(false),
            cut_after: AtomicU64::new(u64::MAX),
            to_host_bytes: AtomicU64::new(0),
            to_site_bytes: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
            rebind_at: AtomicU64::new(u64::MAX),
            rebinds: AtomicU64::new(0),
            order: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let front = Arc::new(front);
        let upstreams: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
        let mut threads = Vec::new();

        // Datagrams from sites, toward the host.
        {
            let (shared, front, upstreams) = (shared.clone(), front.clone(), upstreams.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !shared.stop.load(Ordering::SeqCst) {
                    let Ok((n, client)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    let mut upstreams_now = upstreams.lock().expect("upstreams");
                    if shared.to_host_bytes.load(Ordering::SeqCst)
                        >= shared.rebind_at.load(Ordering::SeqCst)
                    {
                        // The old sockets' reply threads go on: the host may answer there
                        // until it validates the new path.
                        upstreams_now.clear();
                        shared.rebind_at.store(u64::MAX, Ordering::SeqCst);
                        shared.rebinds.fetch_add(1, Ordering::SeqCst);
                    }
                    let fresh = match upstreams_now.entry(client) {
                        std::collections::hash_map::Entry::Occupied(_) => None,
                        std::collections::hash_map::Entry::Vacant(slot) => {
                            let up = UdpSocket::bind("127.0.0.1:0").expect("upstream");
                            up.connect(host).expect("connect upstream");
                            up.set_read_timeout(Some(Duration::from_millis(50)))
                                .expect("timeout");
                            Some(slot.insert(Arc::new(up)).clone())
                        }
                    };
                    drop(upstreams_now);
                    if let Some(up) = fresh {
                        // Replies from the host for this client.
                        let shared = shared.clone();
                        std::thread::spawn(move || {
                            let mut buf = vec![0u8; 65_536];
                            while !shared.stop.load(Ordering::SeqCst) {
                                if let Ok(n) = up.recv(&mut buf) {
                                    schedule(&shared, false, client, buf[..n].to_vec());
                                }
                            }
                        });
                    }
                    schedule(&shared, true, client, buf[..n].to_vec());
                }
            }));
        }
        // Delivery in time order.
        {
            let (shared, front, upstreams) = (shared.clone(), front.clone(), upstreams.clone());
            threads.push(std::thread::spawn(move || {
                let mut queue = shared.queue.lock().expect("queue");
                while !shared.stop.load(Ordering::SeqCst) {
                    let now = Instant::now();
                    match queue.peek() {
                        Some(p) if p.at <= now => {
                            let Some(p) = queue.pop() else { continue };
                            drop(queue);
                            deliver(&shared, &front, &upstreams, p);
                            queue = shared.queue.lock().expect("queue");
                        }
                        Some(p) => {
                            let wait = p.at - now;
                            queue = shared
                                .wake
                                .wait_timeout(queue, wait.min(Duration::from_millis(50)))
                                .expect("queue")
                                .0;
                        }
                        None => {
                            queue = shared
                                .wake
                                .wait_timeout(queue, Duration::from_millis(50))
                                .expect("queue")
                                .0;
                        }
                    }
                }
            }));
        }
        FaultProxy {
            address,
            shared,
            threads,
        }
    }

    /// Partitions the link once `bytes` more have gone toward the host.
    pub fn cut_after(&self, bytes: u64) {
        let sent = self.to_host_bytes();
        self.shared
            .cut_after
            .store(sent.saturating_add(bytes), Ordering::SeqCst);
    }

    /// Ends the partition a cut started.
    pub fn heal(&self) {
        self.shared.cut_after.store(u64::MAX, Ordering::SeqCst);
        self.shared.partitioned.store(false, Ordering::SeqCst);
    }

    /// True while partitioned.
    pub fn is_partitioned(&self) -> bool {
        self.shared.partitioned.load(Ordering::SeqCst)
    }

    /// Changes the faults from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().expect("faults") = faults;
    }

    /// UDP payload bytes delivered toward the host so far.
    pub fn to_host_bytes(&self) -> u64 {
        self.shared.to_host_bytes.load(Ordering::SeqCst)
    }

    /// UDP payload bytes delivered toward the sites so far.
    pub fn to_site_bytes(&self) -> u64 {
        self.shared.to_site_bytes.load(Ordering::SeqCst)
    }

    /// Gives every client a new upstream socket, so a new address at the host, once `bytes`
    /// more have gone toward the host.
    pub fn rebind_after(&self, bytes: u64) {
        let sent = self.to_host_bytes();
        self.shared
            .rebind_at
            .store(sent.saturating_add(bytes), Ordering::SeqCst);
    }

    /// How many times the clients' upstream sockets were replaced.
    pub fn rebinds(&self) -> u64 {
        self.shared.rebinds.load(Ordering::SeqCst)
    }

    /// Datagrams dropped so far because the bottleneck queue was full.
    pub fn overflowed(&self) -> u64 {
        self.shared.overflowed.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Applies loss, duplication, delay, reordering and the bandwidth cap to one datagram.
fn schedule(shared: &Shared, to_host: bool, client: SocketAddr, bytes: Vec<u8>) {
    if shared.partitioned.load(Ordering::SeqCst) {
        return;
    }
    let faults = *shared.faults.lock().expect("faults");
    let (lost, copies, jitter) = {
        let mut rng = shared.rng.lock().expect("rng");
        let lost = rng.unit() < faults.loss;
        let copies = if rng.unit() < faults.duplicate { 2 } else { 1 };
        let jitter = faults.reorder.mul_f64(rng.unit());
        (lost, copies, jitter)
    };
    if lost {
        return;
    }
    let now = Instant::now();
    let leaves = if faults.bandwidth > 0 {
        let mut free = shared.free_at.lock().expect("free");
        let lane = &mut free[usize::from(to_host)];
        let start = (*lane).max(now);
        let waiting = (start - now).as_secs_f64() * faults.bandwidth as f64;
        if faults.queue_bytes > 0 && waiting > faults.queue_bytes as f64 {
            shared.overflowed.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let on_line = (bytes.len() as u64 + HEADERS) as f64 / faults.bandwidth as f64;
        *lane = start + Duration::from_secs_f64(on_line);
        *lane
    } else {
        now
    };
    let at = leaves + faults.delay + jitter;
    let mut queue = shared.queue.lock().expect("queue");
    for _ in 0..copies {
        queue.push(Pending {
            at,
            order: shared.order.fetch_add(1, Ordering::SeqCst),
            to_host,
            client,
            bytes: bytes.clone(),
        });
    }
    shared.wake.notify_all();
}

fn deliver(
    shared: &Shared,
    front: &UdpSocket,
    upstreams: &Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
    p: Pending,
) {
    if shared.partitioned.load(Ordering::SeqCst) {
        return;
    }
    if p.to_host {
        let sent = shared.to_host_bytes.load(Ordering::SeqCst);
        if sent >= shared.cut_after.load(Ordering::SeqCst) {
            shared.partitioned.store(true, Ordering::SeqCst);
            return;
        }
        let up = upstreams.lock().expect("upstreams").get(&p.client).cloned();
        if let Some(up) = up
            && up.send(&p.bytes).is_ok()
        {
            shared
                .to_host_bytes
                .fetch_add(p.bytes.len() as u64, Ordering::SeqCst);
        }
    } else if front.send_to(&p.bytes, p.client).is_ok() {
        shared
            .to_site_bytes
            .fetch_add(p.bytes.len() as u64, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `carnet-bench link` relies on: datagrams leave at the line rate (headers counted),
    /// and those that find the bottleneck queue full are dropped, counted.
    #[test]
    fn the_link_paces_datagrams_at_its_rate_and_drops_what_overflows_its_queue() {
        let sink = UdpSocket::bind("127.0.0.1:0").expect("sink");
        sink.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        // 100,000 bytes per second: a datagram of 972 bytes and its headers take 10 ms on the
        // line; the queue holds ten of them.
        let proxy = FaultProxy::start(
            sink.local_addr().expect("address"),
            Faults {
                bandwidth: 100_000,
                queue_bytes: 10_000,
                ..Faults::default()
            },
        );
        let client = UdpSocket::bind("127.0.0.1:0").expect("client");
        for _ in 0..50 {
            client.send_to(&[7u8; 972], proxy.address).expect("send");
        }
        let mut arrivals = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = sink.recv(&mut buf) {
            assert_eq!(n, 972);
            arrivals.push(Instant::now());
        }
        let received = arrivals.len() as u64;
        assert!(
            (10..50).contains(&received),
            "{received} of 50 went through a queue of ten"
        );
        assert_eq!(proxy.overflowed(), 50 - received, "each drop is counted");
        assert_eq!(proxy.to_host_bytes(), received * 972);
        let spread = arrivals[arrivals.len() - 1] - arrivals[0];
        assert!(
            spread >= Duration::from_millis(9 * (received - 1)),
            "{received} datagrams in {spread:?}: faster than the line"
        );
        assert_eq!(proxy.to_site_bytes(), 0);
    }
}
