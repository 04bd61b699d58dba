//! Tail probes: the last datagrams of a burst, lost, found in about a round trip.
//!
//! QUIC finds a datagram lost when one sent after it is acknowledged (RFC 9002 §6.1). The
//! last datagrams of a burst — a push's end, a `Pulled` batch, a short reply — have none after
//! them: they wait for the probe timeout (the smoothed round trip, four times its variation,
//! the peer's acknowledgement delay), whose probes, in quinn, carry no data, so one more round
//! trip passes before the loss is found. On a long radio link whose queue makes the round trip
//! vary, that was 0.7–1.4 s at 300 ms, and twice that when the copy sent again was lost too: a
//! push at 10 % loss stalled 1.6–3.5 s in about one run in five (benches/LOG.md, 2026-12-07).
//!
//! While a round is under way on a connection that has lost a datagram, an end whose stream
//! data stopped going out a quarter of a round trip ago sends an empty QUIC datagram (a
//! DATAGRAM frame, which the peer acknowledges), and a second one a quarter of a round trip
//! later: their acknowledgement names what is missing before them, which quinn sends again
//! once 9/8 of a round trip has passed since it went (RFC 9002's time threshold), without
//! waiting for the probe timeout. A datagram whose acknowledgement was lost is acknowledged
//! again with them.
//!
//! Invariants: no probe on a connection that has lost nothing (a clean link carries none), at
//! most [`PROBES`] after each stop of the stream data, none while no round is under way (the
//! task then waits for one, without waking); the probes carry nothing, and an end reads the
//! datagrams it receives only to drop them (a peer may send none larger than
//! `transport::DATAGRAMS_HELD` allows, and quinn holds at most that many bytes of them
//! unread).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Probes after each stop of a connection's stream data (one more, should the first be lost).
pub const PROBES: u32 = 2;

/// The shortest wait between two looks at a connection's stream data: the peer's largest
/// acknowledgement delay (quinn's default, 25 ms), before which no probe is acknowledged anyway
/// (on a fast link a quarter of a round trip is far less).
const TICK_MIN: Duration = Duration::from_millis(25);

/// A connection's tail probes: a task that runs while at least one round is under way.
#[derive(Debug, Default)]
pub(crate) struct TailProbes {
    /// Rounds (site) or session streams (host) under way.
    underway: AtomicUsize,
    /// A round began.
    begun: Notify,
    /// Looks at the connection's stream data so far.
    looks: AtomicUsize,
    /// The task waits for a round.
    waiting: std::sync::atomic::AtomicBool,
}

/// A round under way: the connection's probes run until the last of these is dropped.
#[derive(Debug)]
pub(crate) struct Underway(Arc<TailProbes>);

impl Drop for Underway {
    fn drop(&mut self) {
        self.0.underway.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TailProbes {
    /// The tail probes of `conn`: a task that ends with the connection; and one that reads
    /// and drops the peer's datagrams (whatever quinn's accounting of those it holds).
    pub(crate) fn start(conn: &quinn::Connection) -> Arc<TailProbes> {
        let probes = Arc::new(TailProbes::default());
        tokio::spawn(run(conn.clone(), probes.clone()));
        let peer = conn.clone();
        tokio::spawn(async move { while peer.read_datagram().await.is_ok() {} });
        probes
    }

    /// A round begins; the probes run until the guard is dropped.
    pub(crate) fn during(self: &Arc<Self>) -> Underway {
        self.underway.fetch_add(1, Ordering::AcqRel);
        self.begun.notify_one();
        Underway(self.clone())
    }

    /// Looks at the connection's stream data so far (one each quarter round trip of a round).
    #[cfg(test)]
    fn looks(&self) -> usize {
        self.looks.load(Ordering::Acquire)
    }

    fn is_underway(&self) -> bool {
        self.underway.load(Ordering::Acquire) > 0
    }
}

async fn run(conn: quinn::Connection, probes: Arc<TailProbes>) {
    loop {
        while !probes.is_underway() {
            probes.waiting.store(true, Ordering::Release);
            tokio::select! {
                () = probes.begun.notified() => {}
                _ = conn.closed() => return,
            }
        }
        probes.waiting.store(false, Ordering::Release);
        let mut stream_frames = conn.stats().frame_tx.stream;
        let mut left = 0;
        loop {
            let tick = (conn.rtt() / 4).max(TICK_MIN);
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                _ = conn.closed() => return,
            }
            if !probes.is_underway() {
                break;
            }
            probes.looks.fetch_add(1, Ordering::AcqRel);
            let stats = conn.stats();
            if stats.frame_tx.stream != stream_frames {
                // Stream data went out since the last look: once it stops, probes follow.
                stream_frames = stats.frame_tx.stream;
                left = PROBES;
            } else if left > 0
                && stats.path.lost_packets > 0
                && conn.send_datagram(bytes::Bytes::new()).is_ok()
            {
                left -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault_proxy::{FaultProxy, Faults};
    use crate::pki::{HOST_NAME, issue_host, issue_site, new_ca};
    use crate::testkit::{echo_host, now_secs as now};
    use crate::transport::{Revoked, client_config, server_config};

    /// A site's connection to an echoing host, through a fault proxy if `through_proxy`.
    async fn connection(
        through_proxy: bool,
    ) -> (
        quinn::Endpoint,
        quinn::Endpoint,
        quinn::Connection,
        Option<FaultProxy>,
    ) {
        let ca = new_ca(now()).expect("ca");
        let host = issue_host(&ca, now(), None).expect("host cert");
        let site = issue_site(&ca, 7, now()).expect("site cert");
        let server = server_config(&ca.cert_der, &host, Arc::<Revoked>::default()).expect("server");
        let (host_endpoint, addr) = echo_host(server);
        let proxy = through_proxy.then(|| FaultProxy::start(addr, Faults::default()));
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
        endpoint.set_default_client_config(
            client_config(&ca.cert_der, &site, None, &[]).expect("client"),
        );
        let to = proxy.as_ref().map_or(addr, |p| p.address);
        let conn = within(endpoint.connect(to, HOST_NAME).expect("connect"))
            .await
            .expect("handshake");
        (host_endpoint, endpoint, conn, proxy)
    }

    /// `bytes` to the host and back on a stream of their own.
    async fn echo(conn: &quinn::Connection, bytes: usize) {
        let (mut send, mut recv) = within(conn.open_bi()).await.expect("stream");
        send.write_all(&vec![7; bytes]).await.expect("write");
        send.finish().expect("finish");
        let back = within(recv.read_to_end(1 << 20)).await.expect("echo");
        assert_eq!(back.len(), bytes);
    }

    async fn within<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .expect("in time")
    }

    /// Waits until `probes` looked `more` times again at the connection.
    async fn looks_more(probes: &TailProbes, more: usize) {
        let until = probes.looks() + more;
        within(async {
            while probes.looks() < until {
                tokio::time::sleep(TICK_MIN).await;
            }
        })
        .await;
    }

    /// Probes that went out on `conn` so far (DATAGRAM frames in its packets).
    fn sent(conn: &quinn::Connection) -> u64 {
        conn.stats().frame_tx.datagram
    }

    /// Waits until `count` probes in all went out on `conn`.
    async fn sent_reaches(conn: &quinn::Connection, count: u64) {
        within(async {
            while sent(conn) < count {
                tokio::time::sleep(TICK_MIN).await;
            }
        })
        .await;
    }

    /// On a connection that lost nothing, a round's stream data that stops is followed by no
    /// probe.
    #[tokio::test]
    async fn a_connection_that_lost_nothing_sends_no_probe() {
        let (_host, _endpoint, conn, _) = connection(false).await;
        let probes = TailProbes::start(&conn);
        let _underway = probes.during();
        echo(&conn, 64 << 10).await;
        looks_more(&probes, 8).await;
        assert_eq!(
            conn.stats().path.lost_packets,
            0,
            "loopback lost a datagram"
        );
        assert_eq!(sent(&conn), 0);
    }

    /// Once the connection lost a datagram, each stop of a round's stream data is followed
    /// by `PROBES` probes, and no more until stream data goes again; stream data outside a
    /// round is followed by none; the host's end takes them and the connection stays open.
    #[tokio::test]
    async fn each_stop_of_the_stream_data_is_followed_by_two_probes_once_a_datagram_was_lost() {
        let (_host, _endpoint, conn, proxy) = connection(true).await;
        let proxy = proxy.expect("proxy");
        let probes = TailProbes::start(&conn);
        let underway = probes.during();
        // The first exchange's datagrams toward the host are dropped until healed.
        proxy.cut_after(0);
        let first = tokio::spawn({
            let conn = conn.clone();
            async move { echo(&conn, 16 << 10).await }
        });
        within(async {
            while !proxy.is_partitioned() {
                tokio::time::sleep(TICK_MIN).await;
            }
        })
        .await;
        proxy.heal();
        first.await.expect("first exchange");
        within(async {
            while conn.stats().path.lost_packets == 0 {
                tokio::time::sleep(TICK_MIN).await;
            }
        })
        .await;
        sent_reaches(&conn, u64::from(PROBES)).await;
        looks_more(&probes, 8).await;
        let before = sent(&conn);
        echo(&conn, 16 << 10).await;
        sent_reaches(&conn, before + u64::from(PROBES)).await;
        looks_more(&probes, 8).await;
        assert_eq!(sent(&conn), before + u64::from(PROBES));
        // The round over, stream data goes and stops: no probe follows, in the next round
        // either.
        drop(underway);
        within(async {
            while !probes.waiting.load(Ordering::Acquire) {
                tokio::time::sleep(TICK_MIN).await;
            }
        })
        .await;
        echo(&conn, 16 << 10).await;
        let _underway = probes.during();
        looks_more(&probes, 8).await;
        assert_eq!(sent(&conn), before + u64::from(PROBES));
        assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
        echo(&conn, 1).await;
    }
}
