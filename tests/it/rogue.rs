//! A rogue site: the holder of one enrolled site's certificate (a stolen or misused pharmacy PC)
//! who speaks the wire protocol directly instead of running `carnet-syncd`, so it can send
//! whatever the host accepts on the wire. Each test here is an attack on a real host daemon;
//! the host must decide every request again with its own rules (the host trusts no site).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use carnet_store::ids::SiteId;
use carnet_store::replica::{SignedTraceHead, TraceRecord};
use carnet_syncd::enrol::Bundle;
use carnet_syncd::frame::{self, FrameDecoder};
use carnet_syncd::pki::Identity;
use carnet_syncd::session::Msg;

/// A connection to the host made with an enrolled site's certificate, outside any daemon.
pub struct Rogue {
    rt: tokio::runtime::Runtime,
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
    /// The site id the certificate names.
    pub site: u32,
    /// The certificate and its key.
    pub identity: Identity,
}

impl std::fmt::Debug for Rogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rogue(site {})", self.site)
    }
}

/// The trace chain key a rogue presents unless a test says otherwise.
pub const ROGUE_CHAIN_KEY: [u8; 32] = [7; 32];

/// How long a rogue waits for the host before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

impl Rogue {
    /// Connects to the host named in the enrolment bundle at `bundle`, with its certificate.
    pub fn connect(bundle: &Path) -> Rogue {
        let bundle = Bundle::from_bytes(&std::fs::read(bundle).expect("bundle file"))
            .expect("a valid enrolment bundle");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let host: SocketAddr = bundle.host_address.parse().expect("host address");
        let (endpoint, conn) = rt.block_on(async {
            let mut endpoint =
                quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
            endpoint.set_default_client_config(bundle.client_config().expect("client config"));
            // The host daemon may still be binding: try again until it answers, bounded.
            let deadline = tokio::time::Instant::now() + PATIENCE;
            loop {
                let attempt = endpoint
                    .connect(host, carnet_syncd::pki::HOST_NAME)
                    .expect("connect");
                match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                    Ok(Ok(conn)) => break (endpoint, conn),
                    _ if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => panic!("the host never answered: {other:?}"),
                }
            }
        });
        Rogue {
            rt,
            conn,
            _endpoint: endpoint,
            site: bundle.site_id,
            identity: bundle.identity,
        }
    }

    /// Sends `msgs` on a new stream, then `Bye`, and answers everything the host said until it
    /// closed the stream (an `Error` reply included).
    pub fn session(&self, msgs: Vec<Msg>) -> Vec<Msg> {
        self.rt.block_on(async {
            let (mut send, mut recv) = self.conn.open_bi().await.expect("stream");
            for m in msgs.iter().chain([&Msg::Bye]) {
                send.write_all(&frame::encode(m).expect("encode"))
                    .await
                    .expect("send");
            }
            let _ = send.finish();
            let bytes = tokio::time::timeout(PATIENCE, recv.read_to_end(256 << 20))
                .await
                .expect("the host answered in time")
                .unwrap_or_default();
            let mut decoder = FrameDecoder::new();
            decoder.push(&bytes);
            let mut out = Vec::new();
            while let Ok(Some(m)) = decoder.next_message::<Msg>() {
                out.push(m);
            }
            out
        })
    }

    /// A `Hello` as this site, with `cursor` and `outbox_acked`, and a trace chain key of the
    /// rogue's own (a fixed one: the host holds the first key a site presents).
    pub fn hello(&self, cursor: u64, outbox_acked: u64) -> Msg {
        self.hello_with_key(cursor, outbox_acked, ROGUE_CHAIN_KEY)
    }

    /// A `Hello` presenting `chain_key`.
    pub fn hello_with_key(&self, cursor: u64, outbox_acked: u64, chain_key: [u8; 32]) -> Msg {
        Msg::Hello {
            site: self.site,
            cursor,
            outbox_acked,
            chain_key,
            about: carnet_syncd::session::SiteAbout::default(),
            renewal: None,
        }
    }

    /// `Traces` of `records` with a head this rogue signs with its certificate's key, as site
    /// `as_site`, over the entry `(seq, hash)`.
    pub fn traces_signed(
        &self,
        records: Vec<TraceRecord>,
        as_site: u32,
        (seq, hash): (u64, [u8; 32]),
    ) -> Msg {
        let message = SignedTraceHead::message(SiteId(as_site), seq, &hash);
        let signature = carnet_syncd::pki::sign(&self.identity, &message).expect("sign");
        Msg::Traces {
            records,
            head: Some(SignedTraceHead {
                seq,
                hash,
                signature,
            }),
        }
    }

    /// `Traces` of `records` as an honest site sends them: signed as itself over the last.
    pub fn traces(&self, records: Vec<TraceRecord>) -> Msg {
        let last = records.last().map_or((0, [0; 32]), |r| (r.seq, r.hash));
        self.traces_signed(records, self.site, last)
    }

    /// Everything the host sends this site when it pulls its whole log from the start.
    pub fn pull_all(&self) -> Vec<Msg> {
        self.session(vec![self.hello(0, 0), Msg::Pull { after: 0 }])
    }
}

/// The messages of kind `Pulled` flattened into their items.
pub fn pulled_items(replies: &[Msg]) -> Vec<carnet_store::replica::PullItem> {
    replies
        .iter()
        .filter_map(|m| match m {
            Msg::Pulled { items, .. } => Some(items.iter().map(|(_, i)| i.clone())),
            _ => None,
        })
        .flatten()
        .collect()
}
