//! `carnet.toml`: the daemon's settings, written (commented) by `carnet init` into the data
//! folder and read by `carnet-syncd`.
//!
//! Invariants: a loaded configuration is valid for its role (a host has a listen address, a
//! site one host address or more: `HostAddresses`, never empty, never one twice); unknown keys
//! and malformed values are refused with the line at fault;
//! the file written (`to_commented_toml`) loads as the settings it was written from, whatever
//! the paths hold (strings are quoted and escaped as TOML).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use carnet_store::replica::{POSTGRES_MARK, Storage};

use crate::error::{Error, Result};

/// File name inside the data folder.
pub const CONFIG_FILE: &str = "carnet.toml";

/// `text` as a TOML string, quoted and escaped (a path may hold `"`, `\` or a line break).
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// The daemon's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigRole {
    /// The national host.
    Host,
    /// A clinic, pharmacy or mobile unit.
    Site,
}

/// How the daemon writes its logs on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event (a person reading the journal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's
    /// fields (journald, Loki, jq).
    Json,
}

/// The settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Host or site.
    pub role: ConfigRole,
    /// Host: where sites connect.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Site: where the host listens: one address, or a list (the daemons of one host, tried
    /// in order from the one that last answered: `net::Link`). What the site dials.
    #[serde(default)]
    pub host_address: Option<HostAddresses>,
    /// Folder watched for documents, relative to the data folder unless absolute.
    #[serde(default = "default_inbox")]
    pub inbox: PathBuf,
    /// Log level: error, warn, info, debug or trace.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Logs as text, or as one JSON object per line.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Site: seconds between rounds while connected and nothing happens (changes on either
    /// side start a round at once).
    #[serde(default = "default_sync_every")]
    pub sync_every: u64,
    /// Site: the authority lease in hours (DOMAIN §5): past it without news from the host,
    /// normal reads are refused and only break-glass remains. The daemon applies it to the
    /// replica when it starts. `None`: the replica's own (72 h unless `carnet init
    /// --lease-hours` said otherwise).
    #[serde(default)]
    pub lease_hours: Option<u32>,
    /// Host: the folder where the daemon writes one JSON file per notification for a
    /// messaging gateway (`spool`), relative to the data folder unless absolute: off unless set.
    #[serde(default)]
    pub notification_spool: Option<PathBuf>,
    /// The replica's page cache in MiB (`Replica::open_with_cache`): with the daemon's own
    /// buffers, what bounds its memory whatever the replica stores.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: usize,
    /// The daemon's small HTTP listener (`GET /metrics`, the status page): off unless set.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// `[host]`: the host's own settings.
    #[serde(default)]
    pub host: Option<HostSettings>,
    /// Site: where it accepts sessions from its peers (`[[peer]]`, ALPN `carnet-peer/1`,
    /// `transport::peer_server_config`): off unless set.
    #[serde(default)]
    pub peer_listen: Option<SocketAddr>,
    /// Site: find peers on the local network (mDNS, `discovery`), and announce this site
    /// there: a site found is admitted as a listed one is (by its certificate).
    #[serde(default)]
    pub discover: bool,
    /// Site: `[[peer]]`, the sites it opens sessions with and accepts sessions from, each
    /// known by the site id in its certificate. No name, site or address twice.
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerConfig>,
}

/// A `[[peer]]` of `carnet.toml`: another enrolled site this one hands dossiers over to, or
/// takes them from, without the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// What the operator calls it: letters, digits, `-`, `_` and `.`, 1 to 64 of them.
    pub name: String,
    /// Where its `peer_listen` is reached.
    pub address: SocketAddr,
    /// Its site id, as its certificate names it (`site-N`, `pki list` at the host): what a
    /// session is matched by, never the address it comes from.
    pub site: u32,
}

/// Longest `[[peer]]` name.
pub const PEER_NAME_MAX: usize = 64;
/// Most `[[peer]]` entries (each is checked at every peer handshake).
pub const PEERS_MAX: usize = 256;

impl Config {
    /// The `[[peer]]` named `name`.
    pub fn peer(&self, name: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// The `[[peer]]` whose certificate names site `site`.
    pub fn peer_by_site(&self, site: u32) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.site == site)
    }

    /// Checks `peer_listen`, `discover` and `[[peer]]`.
    fn validate_peers(&self) -> Result<()> {
        let invalid = |why: String| Err(Error::Invalid(format!("carnet.toml: {why}")));
        if self.role == ConfigRole::Host {
            if self.peer_listen.is_some() || self.discover || !self.peers.is_empty() {
                return invalid(
                    "peer_listen, discover and [[peer]] are for sites (the host is reached over `listen`)"
                        .into(),
                );
            }
            return Ok(());
        }
        if self.peers.len() > PEERS_MAX {
            return invalid(format!(
                "{} [[peer]] entries: at most {PEERS_MAX}",
                self.peers.len()
            ));
        }
        for (i, p) in self.peers.iter().enumerate() {
            let good = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
            if p.name.is_empty() || p.name.len() > PEER_NAME_MAX || !p.name.chars().all(good) {
                return invalid(format!(
                    "[[peer]] name '{}' is not 1 to {PEER_NAME_MAX} letters, digits, '-', '_' or '.'",
                    p.name.escape_debug()
                ));
            }
            if p.site == 0 {
                return invalid(format!(
                    "[[peer]] {}: site = 0 names no site (the id in its certificate, site-N)",
                    p.name
                ));
            }
            if p.address.ip().is_unspecified() || p.address.port() == 0 {
                return invalid(format!(
                    "[[peer]] {}: address {} is not one to dial (an IP and a port the peer listens on)",
                    p.name, p.address
                ));
            }
            let before = &self.peers[..i];
            if before.iter().any(|q| q.name == p.name) {
                return invalid(format!("[[peer]] name '{}' comes twice", p.name));
            }
            if let Some(q) = before.iter().find(|q| q.site == p.site) {
                return invalid(format!(
                    "[[peer]] {} and {} both name site {}",
                    q.name, p.name, p.site
                ));
            }
            if let Some(q) = before.iter().find(|q| q.address == p.address) {
                return invalid(format!(
                    "[[peer]] {} and {} both have address {}",
                    q.name, p.name, p.address
                ));
            }
        }
        if let Some(listen) = self.peer_listen
            && listen.port() == 0
        {
            return invalid(format!(
                "peer_listen = \"{listen}\" has no port: peers dial a fixed one"
            ));
        }
        Ok(())
    }
}

/// `[host]` in `carnet.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSettings {
    /// Where the host's tables live: a PostgreSQL address (`postgres://user@host:port/db`);
    /// unset, `carnet.redb` in the data folder. Several host daemons may share one database.
    #[serde(default)]
    pub storage: Option<String>,
    /// With `storage`: the snapshots the daemon keeps open at once, each on a connection of
    /// its own (1 to 1,024; `kv::pg::READERS_MAX` unless set). With the page cache, what
    /// bounds the host's memory on PostgreSQL.
    #[serde(default)]
    pub read_connections: Option<usize>,
}

/// `[http]` in `carnet.toml`: where the daemon serves `/metrics` and its status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port, `127.0.0.1:PORT` (a loopback address unless `allow_remote`).
    pub listen: SocketAddr,
    /// Serve on an address other machines reach. `/metrics` carries site ids and counts only,
    /// and the page asks for its token, but both then cross the network in clear (no TLS):
    /// prefer a loopback address behind a reverse proxy or an SSH tunnel.
    #[serde(default)]
    pub allow_remote: bool,
}

/// A site's `host_address`: `"IP:PORT"`, or `["IP:PORT", …]` for a host run as several
/// daemons over one database (they share the national CA and the host's certificate, so any
/// of them serves the site). Never empty, no address twice; order kept (the site tries them in
/// that order, from the one that last answered). Written back as it was read: one address as
/// a string, several as a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddresses(Vec<SocketAddr>);

impl HostAddresses {
    /// The addresses, in order; refused when empty or when one comes twice.
    pub fn new(addresses: Vec<SocketAddr>) -> std::result::Result<HostAddresses, String> {
        if addresses.is_empty() {
            return Err("host_address lists no address: give at least one \"IP:PORT\"".into());
        }
        for (i, a) in addresses.iter().enumerate() {
            if addresses[..i].contains(a) {
                return Err(format!("host_address lists {a} twice"));
            }
        }
        Ok(HostAddresses(addresses))
    }

    /// The addresses, in order.
    pub fn list(&self) -> &[SocketAddr] {
        &self.0
    }
}

impl From<SocketAddr> for HostAddresses {
    fn from(address: SocketAddr) -> Self {
        HostAddresses(vec![address])
    }
}

impl std::fmt::Display for HostAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

impl Serialize for HostAddresses {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for HostAddresses {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Addresses;
        fn parse<E: serde::de::Error>(text: &str) -> std::result::Result<SocketAddr, E> {
            text.parse()
                .map_err(|_| E::custom(format!("'{text}' is not a host address (IP:PORT)")))
        }
        impl<'de> serde::de::Visitor<'de> for Addresses {
            type Value = HostAddresses;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an address \"IP:PORT\" or a list of them")
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<Self::Value, E> {
                Ok(parse::<E>(v)?.into())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut list = Vec::new();
                while let Some(text) = seq.next_element::<String>()? {
                    list.push(parse(&text)?);
                }
                HostAddresses::new(list).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_any(Addresses)
    }
}

fn default_inbox() -> PathBuf {
    PathBuf::from("inbox")
}

fn default_log_level() -> String {
    "info".into()
}

/// Seconds between a site's rounds while nothing happens, unless `sync_every` says otherwise.
pub const DEFAULT_SYNC_EVERY: u64 = 10;

fn default_sync_every() -> u64 {
    DEFAULT_SYNC_EVERY
}

fn default_cache_mib() -> usize {
    carnet_store::replica::DEFAULT_CACHE_MIB
}

impl Config {
    /// Checks the settings make sense together.
    pub fn validate(&self) -> Result<()> {
        match self.role {
            ConfigRole::Host if self.listen.is_none() => {
                return Err(Error::Invalid(
                    "carnet.toml: a host needs `listen = \"IP:PORT\"`".into(),
                ));
            }
            ConfigRole::Site if self.host_address.is_none() => {
                return Err(Error::Invalid(
                    "carnet.toml: a site needs `host_address = \"IP:PORT\"` (from its enrolment bundle), or a list of the host's daemons, `host_address = [\"IP:PORT\", \"IP:PORT\"]`"
                        .into(),
                ));
            }
            _ => {}
        }
        match (self.role, self.lease_hours) {
            (ConfigRole::Host, Some(_)) => {
                return Err(Error::Invalid(
                    "carnet.toml: lease_hours is for sites (the host is the authority)".into(),
                ));
            }
            (ConfigRole::Site, Some(h)) if !(1..=8_760).contains(&h) => {
                return Err(Error::Invalid(format!(
                    "carnet.toml: lease_hours {h} is not between 1 and 8760 (a year)"
                )));
            }
            _ => {}
        }
        if self.role == ConfigRole::Site && self.notification_spool.is_some() {
            return Err(Error::Invalid(
                "carnet.toml: notification_spool is for the host (it makes the notifications)"
                    .into(),
            ));
        }
        if let Some(host) = &self.host {
            if self.role == ConfigRole::Site {
                return Err(Error::Invalid(
                    "carnet.toml: [host] is for the host (a site keeps its replica in carnet.redb)"
                        .into(),
                ));
            }
            if let Some(storage) = &host.storage
                && !(storage.starts_with("postgres://") || storage.starts_with("postgresql://"))
            {
                return Err(Error::Invalid(
                    "carnet.toml: [host] storage is a PostgreSQL address, postgres://user@host:port/database"
                        .into(),
                ));
            }
            if let Some(n) = host.read_connections {
                if host.storage.is_none() {
                    return Err(Error::Invalid(
                        "carnet.toml: [host] read_connections goes with storage (PostgreSQL); carnet.redb has its cache_mib"
                            .into(),
                    ));
                }
                if !(1..=1024).contains(&n) {
                    return Err(Error::Invalid(format!(
                        "carnet.toml: [host] read_connections = {n}: between 1 and 1024"
                    )));
                }
            }
        }
        if !(8..=65_536).contains(&self.cache_mib) {
            return Err(Error::Invalid(format!(
                "carnet.toml: cache_mib {} is not between 8 and 65536 (MiB)",
                self.cache_mib
            )));
        }
        if !(1..=86_400).contains(&self.sync_every) {
            return Err(Error::Invalid(format!(
                "carnet.toml: sync_every {} is not between 1 and 86400 seconds",
                self.sync_every
            )));
        }
        if let Some(http) = &self.http
            && !http.listen.ip().is_loopback()
            && !http.allow_remote
        {
            return Err(Error::Invalid(format!(
                "carnet.toml: [http] listen = \"{}\" is not a loopback address: use 127.0.0.1, or set allow_remote = true (the page and /metrics then cross the network without TLS)",
                http.listen
            )));
        }
        self.validate_peers()?;
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log_level.as_str()) {
            return Err(Error::Invalid(format!(
                "carnet.toml: log_level '{}' is not one of error, warn, info, debug, trace",
                self.log_level
            )));
        }
        Ok(())
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text, path)
    }

    /// Parses and validates the text of a configuration file (`origin` names it in errors).
    pub fn parse(text: &str, origin: &Path) -> Result<Config> {
        let config: Config = toml::from_str(text)
            .map_err(|e| Error::Invalid(format!("{}: {e}", origin.display())))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads `path` again for a running daemon (SIGHUP): answers the settings to run with — these
    /// with `log_level`, `sync_every` and `inbox` taken from the file — and the names of the
    /// settings the file changes that only a restart applies (`listen`, `host_address`,
    /// `lease_hours`, `log_format`, `peer_listen`, `peer`…). An unreadable or invalid file, or one for the other role, is refused
    /// whole: the caller keeps these settings.
    pub fn reload(&self, path: &Path) -> Result<(Config, Vec<&'static str>)> {
        let new = Config::load(path)?;
        if new.role != self.role {
            return Err(Error::Invalid(format!(
                "{}: the role changed (a daemon keeps its role; restart it)",
                path.display()
            )));
        }
        let mut restart = Vec::new();
        if new.listen != self.listen {
            restart.push("listen");
        }
        if new.host_address != self.host_address {
            restart.push("host_address");
        }
        if new.lease_hours != self.lease_hours {
            restart.push("lease_hours");
        }
        if new.log_format != self.log_format {
            restart.push("log_format");
        }
        if new.http != self.http {
            restart.push("http");
        }
        if new.notification_spool != self.notification_spool {
            restart.push("notification_spool");
        }
        if new.cache_mib != self.cache_mib {
            restart.push("cache_mib");
        }
        if new.host != self.host {
            restart.push("host.storage");
        }
        if new.peer_listen != self.peer_listen {
            restart.push("peer_listen");
        }
        if new.discover != self.discover {
            restart.push("discover");
        }
        Ok((
            Config {
                log_level: new.log_level,
                sync_every: new.sync_every,
                inbox: new.inbox,
                peers: new.peers,
                ..self.clone()
            },
            restart,
        ))
    }

    /// Where the replica's tables live.
    pub fn storage(&self) -> Storage {
        let Some(host) = &self.host else {
            return Storage::File;
        };
        match &host.storage {
            Some(url) => Storage::Postgres(carnet_store::replica::Postgres {
                url: url.clone(),
                read_connections: host
                    .read_connections
                    .unwrap_or(carnet_store::kv::pg::READERS_MAX),
            }),
            None => Storage::File,
        }
    }

    /// Where the tables of the replica in `data` live: a host whose tables are in PostgreSQL
    /// (`POSTGRES_MARK` in its folder) says where in its `carnet.toml`; any other replica
    /// keeps them in its folder (its `carnet.toml`, if any, is not read).
    pub fn storage_of(data: &Path) -> Result<Storage> {
        if !data.join(POSTGRES_MARK).exists() {
            return Ok(Storage::File);
        }
        let storage = Config::load(&data.join(CONFIG_FILE))?.storage();
        if storage == Storage::File {
            return Err(Error::Invalid(format!(
                "the host in {} keeps its tables in PostgreSQL, and its carnet.toml has no [host] storage address",
                data.display()
            )));
        }
        Ok(storage)
    }

    /// The inbox folder the `carnet.toml` of data folder `data` names, resolved, with nothing
    /// else in the file checked: a site provisioned by hand (no `host_address`) has an inbox too.
    pub fn inbox_of(data: &Path) -> Result<PathBuf> {
        #[derive(Deserialize)]
        struct InboxOnly {
            #[serde(default = "default_inbox")]
            inbox: PathBuf,
        }
        let path = data.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
        let only: InboxOnly = toml::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        Ok(data.join(only.inbox))
    }

    /// The inbox folder, resolved against the data folder.
    pub fn inbox_dir(&self, data: &Path) -> PathBuf {
        if self.inbox.is_absolute() {
            self.inbox.clone()
        } else {
            data.join(&self.inbox)
        }
    }

    /// The notification spool folder, if set, resolved against the data folder.
    pub fn spool_dir(&self, data: &Path) -> Option<PathBuf> {
        let dir = self.notification_spool.as_ref()?;
        Some(if dir.is_absolute() {
            dir.clone()
        } else {
            data.join(dir)
        })
    }

    /// The commented file `carnet init` writes.
    pub fn to_commented_toml(&self) -> String {
        let role = match self.role {
            ConfigRole::Host => "host",
            ConfigRole::Site => "site",
        };
        let unset = |key: &str| format!("# {key} = \"IP:PORT\"   (not set yet)");
        let listen = |a: Option<SocketAddr>| match a {
            Some(a) => format!("listen = \"{a}\""),
            None => unset("listen"),
        };
        let host_address = |a: &Option<HostAddresses>| match a.as_ref().map(|a| a.list()) {
            Some([one]) => format!("host_address = \"{one}\""),
            Some(many) => format!(
                "host_address = [{}]",
                many.iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => unset("host_address"),
        };
        let lease = match (self.role, self.lease_hours) {
            (ConfigRole::Site, Some(h)) => format!("lease_hours = {h}"),
            (ConfigRole::Site, None) => "# lease_hours = 72".to_string(),
            (ConfigRole::Host, _) => "# lease_hours: sites only".to_string(),
        };
        let (listen, host) = match self.role {
            ConfigRole::Host => (
                listen(self.listen),
                "# host_address: sites only".to_string(),
            ),
            ConfigRole::Site => (
                "# listen: the host only".to_string(),
                host_address(&self.host_address),
            ),
        };
        format!(
            "# Carnet daemon settings, read by `carnet-syncd --data DIR` (or --config FILE).\n\
             # Written by `carnet init`. After an edit, `systemctl reload carnet-syncd` (SIGHUP)\n\
             # applies log_level, sync_every and inbox at once; the rest needs a restart.\n\n\
             # \"host\" (the national host) or \"site\" (clinic, pharmacy, mobile unit).\n\
             role = \"{role}\"\n\n\
             # Host: the address sites connect to (QUIC, UDP).\n{listen}\n\n\
             # Site: the host's address, from the enrolment bundle. A host run as several daemons\n\
             # (one database, the same certificate) is named by a list of their addresses:\n\
             # host_address = [\"192.0.2.10:4433\", \"192.0.2.11:4433\"]\n\
             # The site tries them in order, starting with the one that last answered, and\n\
             # moves on to the next when one does not answer (or its connection breaks).\n{host}\n\n\
             # Folder watched for documents and their .carnet.json sidecars (relative to the\n\
             # data folder unless absolute).\n\
             inbox = {}\n\n\
             # error, warn, info, debug or trace. Logs never carry patient data.\n\
             log_level = \"{}\"\n\n\
             # \"text\", or \"json\": one JSON object per line (journald, Loki).\n\
             log_format = \"{}\"\n\n\
             # Site: seconds between rounds while nothing happens. The connection to the host\n\
             # stays open; a change here, or one the host announces, starts a round at once.\n\
             sync_every = {}\n\n\
             # MiB of the database kept in memory: what bounds the daemon's memory, whatever\n\
             # the replica stores (a host serving many sites may give it more).\n\
             cache_mib = {}\n\n\
             # Site: hours the host's records stay good without news from the host (DOMAIN §5).\n\
             # Past it, normal reads are refused; break-glass still works, and is traced.\n\
             {lease}\n\n\
             # Host: a folder for a messaging gateway, one JSON file per notification (mode\n\
             # 0600; holds the dossier's INS), created 0700 if missing. Off unless set.\n\
             {spool}\n{peer_keys}{http}{peer_tables}{host_table}",
            toml_string(&self.inbox.to_string_lossy()),
            self.log_level,
            match self.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            },
            self.sync_every,
            self.cache_mib,
            spool = match &self.notification_spool {
                Some(dir) => format!("notification_spool = {}", toml_string(&dir.to_string_lossy())),
                None => "# notification_spool = \"/var/spool/carnet\"".to_string(),
            },
            http = match &self.http {
                Some(h) => format!(
                    "\n[http]\nlisten = \"{}\"\n{}",
                    h.listen,
                    if h.allow_remote {
                        "allow_remote = true\n"
                    } else {
                        ""
                    }
                ),
                None => "\n# The status page (`carnet ui`) and Prometheus metrics (GET /metrics), off unless\n\
                         # set; a loopback address unless allow_remote = true (no TLS: keep it local).\n\
                         # [http]\n# listen = \"127.0.0.1:8780\"\n"
                    .to_string(),
            },
            peer_keys = match self.role {
                ConfigRole::Host => String::new(),
                ConfigRole::Site => format!(
                    "\n# Site: where other sites listed as [[peer]] open sessions to this one (QUIC,\n\
                     # UDP; their certificates checked against the national CA), for a handover\n\
                     # without the host. Off unless set.\n{}\n\
                     # Finding peers on the local network (mDNS): not supported yet.\n\
                     # discover = false\n",
                    match self.peer_listen {
                        Some(a) => format!("peer_listen = \"{a}\""),
                        None => "# peer_listen = \"0.0.0.0:4434\"".to_string(),
                    }
                ),
            },
            peer_tables = match self.role {
                ConfigRole::Host => String::new(),
                ConfigRole::Site if self.peers.is_empty() => "\n# The sites this one hands dossiers over to, or takes them from: a name for\n\
                     # the operator, where it listens, and its site id (site-N in its certificate:\n\
                     # a session is matched by it, never by address).\n\
                     # [[peer]]\n# name = \"smur-vallee\"\n# address = \"192.0.2.20:4434\"\n# site = 12\n"
                    .to_string(),
                ConfigRole::Site => self
                    .peers
                    .iter()
                    .map(|p| {
                        format!(
                            "\n[[peer]]\nname = {}\naddress = \"{}\"\nsite = {}\n",
                            toml_string(&p.name),
                            p.address,
                            p.site
                        )
                    })
                    .collect(),
            },
            host_table = match (self.role, self.storage()) {
                (ConfigRole::Site, _) => String::new(),
                (ConfigRole::Host, Storage::Postgres(pg)) => format!(
                    "\n[host]\nstorage = {}\n# Snapshots open at once, each on a connection of its own (default {}).\n{}\n",
                    toml_string(&pg.url),
                    carnet_store::kv::pg::READERS_MAX,
                    match self.host.as_ref().and_then(|h| h.read_connections) {
                        Some(n) => format!("read_connections = {n}"),
                        None => format!("# read_connections = {}", carnet_store::kv::pg::READERS_MAX),
                    }
                ),
                (ConfigRole::Host, Storage::File) => "\n# Where the host's tables live: carnet.redb in the data folder unless set to a\n\
                     # PostgreSQL address (several host daemons may share one database).\n\
                     # [host]\n# storage = \"postgres://carnet@db.example:5432/carnet\"\n"
                    .to_string(),
            }
        )
    }

    /// Writes the commented file into `data` (refusing to overwrite one). A site without a host
    /// address yet gets the line commented out; the daemon asks for it when it starts.
    pub fn write_new(&self, data: &Path) -> Result<PathBuf> {
        let path = data.join(CONFIG_FILE);
        if path.exists() {
            return Err(Error::Invalid(format!("{} already exists", path.display())));
        }
        carnet_store::files::write_private(&path, self.to_commented_toml().as_bytes())?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    #[test]
    fn the_inbox_of_a_folder_is_read_without_the_rest_of_its_settings() {
        let dir = tempfile::tempdir().expect("tmp");
        let write = |text: &str| std::fs::write(dir.path().join(CONFIG_FILE), text).expect("write");
        // A site provisioned by hand: no host_address, which `load` refuses.
        write("role = \"site\"\ninbox = \"arrivals\"\n");
        assert!(Config::load(&dir.path().join(CONFIG_FILE)).is_err());
        assert_eq!(
            Config::inbox_of(dir.path()).expect("inbox"),
            dir.path().join("arrivals")
        );
        write("role = \"site\"\ninbox = \"/srv/inbox\"\n");
        assert_eq!(
            Config::inbox_of(dir.path()).expect("inbox"),
            Path::new("/srv/inbox")
        );
        write("role = \"site\"\n");
        assert_eq!(
            Config::inbox_of(dir.path()).expect("inbox"),
            dir.path().join("inbox")
        );
        write("inbox = [");
        assert!(Config::inbox_of(dir.path()).is_err());
    }

    fn site() -> Config {
        Config {
            role: ConfigRole::Site,
            listen: None,
            host_address: Some(addr("127.0.0.1:4433").into()),
            inbox: default_inbox(),
            log_level: default_log_level(),
            log_format: LogFormat::Json,
            sync_every: default_sync_every(),
            lease_hours: Some(48),
            notification_spool: None,
            cache_mib: default_cache_mib(),
            http: None,
            host: None,
            peer_listen: None,
            discover: false,
            peers: Vec::new(),
        }
    }

    #[test]
    fn the_written_file_reads_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = site().write_new(dir.path()).expect("write");
        assert_eq!(Config::load(&path).expect("load"), site());
        assert!(site().write_new(dir.path()).is_err(), "never overwritten");
        let mut host = site();
        host.role = ConfigRole::Host;
        host.host_address = None;
        host.listen = Some("127.0.0.1:5000".parse().expect("addr"));
        host.lease_hours = None;
        host.cache_mib = 256;
        let text = host.to_commented_toml();
        assert_eq!(toml::from_str::<Config>(&text).expect("parse"), host);
        // With the HTTP listener, and without (its lines then commented out).
        for allow_remote in [false, true] {
            host.http = Some(HttpConfig {
                listen: "127.0.0.1:8780".parse().expect("addr"),
                allow_remote,
            });
            let text = host.to_commented_toml();
            assert_eq!(toml::from_str::<Config>(&text).expect("parse"), host);
        }
        // With the host's tables in PostgreSQL (an address with a quote survives).
        host.host = Some(HostSettings {
            storage: Some("postgres://carnet@db.example:5432/car\"net".into()),
            read_connections: None,
        });
        let text = host.to_commented_toml();
        let read = toml::from_str::<Config>(&text).expect("parse");
        assert_eq!(read, host);
        assert_eq!(
            read.storage(),
            Storage::postgres("postgres://carnet@db.example:5432/car\"net")
        );
        // The bound on read connections, when set, goes with it.
        host.host = Some(HostSettings {
            storage: Some("postgres://db/carnet".into()),
            read_connections: Some(12),
        });
        let read = toml::from_str::<Config>(&host.to_commented_toml()).expect("parse");
        assert_eq!(read, host);
        let Storage::Postgres(pg) = read.storage() else {
            panic!("PostgreSQL")
        };
        assert_eq!(pg.read_connections, 12);
        assert_eq!(site().storage(), Storage::File);
        assert_eq!(site().inbox_dir(Path::new("/d")), Path::new("/d/inbox"));
    }

    #[test]
    fn paths_are_written_as_toml_strings() {
        // A plain path as before (scripts edit that line).
        assert!(site().to_commented_toml().contains("\ninbox = \"inbox\"\n"));
        // Quotes, backslashes and line breaks cannot end the string or add a key.
        let mut odd = site();
        odd.inbox = "in\"box\\\nlog_level = \"trace".into();
        let mut host = odd.clone();
        host.role = ConfigRole::Host;
        host.host_address = None;
        host.listen = Some("127.0.0.1:5000".parse().expect("addr"));
        host.lease_hours = None;
        host.notification_spool = Some("spool\"'\\".into());
        for config in [odd, host] {
            let text = config.to_commented_toml();
            assert_eq!(toml::from_str::<Config>(&text).expect("parse"), config);
        }
    }

    #[test]
    fn a_reload_takes_what_may_change_live_and_names_the_rest() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("c.toml");
        let running = site();
        let write = |text: &str| std::fs::write(&path, text).expect("write");
        write(
            "role = \"site\"\nhost_address = \"127.0.0.1:9\"\nsync_every = 2\n\
             log_level = \"debug\"\ninbox = \"/var/spool/carnet\"\nlog_format = \"json\"\n",
        );
        let (now, restart) = running.reload(&path).expect("reloaded");
        assert_eq!(now.sync_every, 2);
        assert_eq!(now.log_level, "debug");
        assert_eq!(now.inbox, Path::new("/var/spool/carnet"));
        // The address and the lease stay as they run until a restart, and are named.
        assert_eq!(now.host_address, running.host_address);
        assert_eq!(now.lease_hours, Some(48));
        assert_eq!(restart, ["host_address", "lease_hours"]);
        write(
            "role = \"site\"\nhost_address = \"127.0.0.1:4433\"\nlease_hours = 48\n\
             log_format = \"text\"\n",
        );
        let (now, restart) = running.reload(&path).expect("reloaded");
        assert_eq!(now.log_format, LogFormat::Json, "the format in force stays");
        assert_eq!(restart, ["log_format"]);
        write(
            "role = \"site\"\nhost_address = \"127.0.0.1:4433\"\nlease_hours = 48\nlog_format = \"json\"\ncache_mib = 512\n",
        );
        let (now, restart) = running.reload(&path).expect("reloaded");
        assert_eq!(now.cache_mib, running.cache_mib, "the cache in force stays");
        assert_eq!(restart, ["cache_mib"]);
        // Refused whole: invalid, unreadable, or another role.
        write("role = \"site\"\nhost_address = \"127.0.0.1:4433\"\ncache_mib = 4\n");
        assert!(
            running.reload(&path).is_err(),
            "a cache too small to work in"
        );
        write("role = \"site\"\nhost_address = \"127.0.0.1:4433\"\nsync_every = 0\n");
        assert!(running.reload(&path).is_err());
        write("role = \"site\"\nhost_address = \"127.0.0.1:4433\"\nsync_every = \"often\"\n");
        assert!(running.reload(&path).is_err());
        write("role = \"host\"\nlisten = \"127.0.0.1:4433\"\n");
        let err = running.reload(&path).expect_err("refused").to_string();
        assert!(err.contains("role"), "{err}");
        assert!(running.reload(&dir.path().join("gone.toml")).is_err());
    }

    /// `host_address` is one address, as `carnet init` writes it from the bundle, or a list of
    /// the host's daemons; either is written back as it was read, and a reload names a change.
    #[test]
    fn a_site_names_one_host_address_or_a_list() {
        let origin = Path::new("carnet.toml");
        let one = Config::parse(
            "role = \"site\"\nhost_address = \"127.0.0.1:4433\"\n",
            origin,
        )
        .expect("one address");
        assert_eq!(
            one.host_address.as_ref().map(|a| a.list()),
            Some(&[addr("127.0.0.1:4433")][..])
        );
        assert!(
            one.to_commented_toml()
                .contains("\nhost_address = \"127.0.0.1:4433\"\n"),
            "a single address stays a string"
        );
        let text = "role = \"site\"\nhost_address = [\"127.0.0.1:4433\", \"[::1]:4434\", \"10.0.0.2:4433\"]\n";
        let many = Config::parse(text, origin).expect("a list");
        let list = [
            addr("127.0.0.1:4433"),
            addr("[::1]:4434"),
            addr("10.0.0.2:4433"),
        ];
        assert_eq!(
            many.host_address.as_ref().map(|a| a.list()),
            Some(&list[..])
        );
        assert_eq!(
            many.host_address.as_ref().map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:4433, [::1]:4434, 10.0.0.2:4433")
        );
        let written = many.to_commented_toml();
        assert!(
            written.contains(
                "\nhost_address = [\"127.0.0.1:4433\", \"[::1]:4434\", \"10.0.0.2:4433\"]\n"
            ),
            "{written}"
        );
        assert_eq!(Config::parse(&written, origin).expect("reads back"), many);
        // A list of one is one address.
        let single = Config::parse(
            "role = \"site\"\nhost_address = [\"127.0.0.1:4433\"]\n",
            origin,
        )
        .expect("a list of one");
        assert_eq!(single.host_address, one.host_address);
        // Through the local API's JSON (the daemon's settings in `sync status`) too: one
        // address as a string, as before, several as a list.
        assert_eq!(
            serde_json::to_value(&one.host_address).expect("json"),
            serde_json::json!("127.0.0.1:4433")
        );
        let json = serde_json::to_string(&many).expect("json");
        assert!(
            json.contains("[\"127.0.0.1:4433\",\"[::1]:4434\",\"10.0.0.2:4433\"]"),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<Config>(&json).expect("from json"),
            many
        );
        // A reload names the change: the link is made at start.
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).expect("write");
        let (_, restart) = one.reload(&path).expect("reloaded");
        assert_eq!(restart, ["host_address"]);
        assert_eq!(
            HostAddresses::new(Vec::new()),
            Err("host_address lists no address: give at least one \"IP:PORT\"".into())
        );
    }

    /// A malformed entry, an empty list, an address twice or a value of another type are
    /// refused with the line at fault.
    #[test]
    fn bad_host_addresses_are_refused_with_their_line() {
        let refused = |value: &str, needle: &str| {
            let text = format!("role = \"site\"\nsync_every = 5\nhost_address = {value}\n");
            let err = Config::parse(&text, Path::new("carnet.toml"))
                .expect_err(value)
                .to_string();
            assert!(err.contains(needle), "{value}: {err}");
            assert!(err.contains("line 3"), "{value}: {err}");
            assert!(err.contains("host_address"), "{value}: {err}");
        };
        refused("\"nowhere\"", "'nowhere' is not a host address");
        refused("\"127.0.0.1\"", "'127.0.0.1' is not a host address");
        refused(
            "[\"127.0.0.1:4433\", \"host.example:4433\"]",
            "'host.example:4433' is not a host address",
        );
        refused("[]", "lists no address");
        refused(
            "[\"127.0.0.1:4433\", \"127.0.0.1:4434\", \"127.0.0.1:4433\"]",
            "lists 127.0.0.1:4433 twice",
        );
        refused("[\"127.0.0.1:4433\", 4434]", "string");
        refused("4433", "IP:PORT");
    }

    #[test]
    fn bad_settings_are_refused_clearly() {
        let dir = tempfile::tempdir().expect("tmp");
        let check = |text: &str, needle: &str| {
            let p = dir.path().join("c.toml");
            std::fs::write(&p, text).expect("write");
            let err = Config::load(&p).expect_err("refused").to_string();
            assert!(err.contains(needle), "{err}");
        };
        check("role = \"host\"\n", "listen");
        check("role = \"site\"\n", "host_address");
        check(
            "role = \"site\"\nhost_address = \"nowhere\"\n",
            "host_address",
        );
        check("role = \"satellite\"\n", "role");
        check(
            "role = \"site\"\nhost_address = \"127.0.0.1:1\"\nfoo = 1\n",
            "foo",
        );
        check(
            "role = \"site\"\nhost_address = \"127.0.0.1:1\"\nlog_level = \"loud\"\n",
            "log_level",
        );
        check(
            "role = \"site\"\nhost_address = \"127.0.0.1:1\"\nsync_every = 0\n",
            "sync_every",
        );
        check(
            "role = \"host\"\nlisten = \"127.0.0.1:1\"\n[host]\nread_connections = 4\n",
            "goes with storage",
        );
        check(
            "role = \"host\"\nlisten = \"127.0.0.1:1\"\n[host]\nstorage = \"postgres://db/c\"\nread_connections = 0\n",
            "between 1 and 1024",
        );
        check(
            "role = \"site\"\nhost_address = \"127.0.0.1:1\"\nlog_format = \"xml\"\n",
            "log_format",
        );
        check(
            "role = \"site\"\nhost_address = \"127.0.0.1:1\"\nlease_hours = 0\n",
            "lease_hours",
        );
        check(
            "role = \"host\"\nlisten = \"127.0.0.1:1\"\nlease_hours = 72\n",
            "lease_hours",
        );
        check(
            "role = \"host\"\nlisten = \"127.0.0.1:1\"\n[http]\nlisten = \"0.0.0.0:8780\"\n",
            "allow_remote",
        );
        check(
            "role = \"host\"\nlisten = \"127.0.0.1:1\"\n[http]\nlisten = \"127.0.0.1:8780\"\nport = 1\n",
            "port",
        );
        check(
            "role = \"site\"\nhost_address = \"127.0.0.1:1\"\n[host]\nstorage = \"postgres://db/carnet\"\n",
            "[host] is for the host",
        );
        check(
            "role = \"host\"\nlisten = \"127.0.0.1:1\"\n[host]\nstorage = \"/var/lib/carnet\"\n",
            "PostgreSQL address",
        );
        // Allowed when asked for.
        let p = dir.path().join("remote.toml");
        std::fs::write(
            &p,
            "role = \"host\"\nlisten = \"127.0.0.1:1\"\n[http]\nlisten = \"0.0.0.0:8780\"\nallow_remote = true\n",
        )
        .expect("write");
        assert!(Config::load(&p).is_ok());
        assert!(Config::load(&dir.path().join("missing.toml")).is_err());
    }

    fn peer(name: &str, address: &str, site: u32) -> PeerConfig {
        PeerConfig {
            name: name.into(),
            address: addr(address),
            site,
        }
    }

    /// A site's peers and where it listens for them are read, written back, found by name
    /// and by site id; a reload takes the new peers and names a new listener (made at start).
    #[test]
    fn a_site_lists_its_peers_and_where_it_listens_for_them() {
        let origin = Path::new("carnet.toml");
        let text = "role = \"site\"\nhost_address = \"127.0.0.1:4433\"\npeer_listen = \"0.0.0.0:4434\"\n\
                    discover = false\n\
                    [[peer]]\nname = \"smur-vallee\"\naddress = \"192.0.2.20:4434\"\nsite = 12\n\
                    [[peer]]\nname = \"clinique.2\"\naddress = \"[::1]:4434\"\nsite = 7\n";
        let config = Config::parse(text, origin).expect("peers");
        assert_eq!(config.peer_listen, Some(addr("0.0.0.0:4434")));
        assert_eq!(
            config.peers,
            [
                peer("smur-vallee", "192.0.2.20:4434", 12),
                peer("clinique.2", "[::1]:4434", 7)
            ]
        );
        assert_eq!(config.peer("clinique.2").map(|p| p.site), Some(7));
        assert_eq!(
            config.peer_by_site(12).map(|p| p.name.as_str()),
            Some("smur-vallee")
        );
        assert!(config.peer("nobody").is_none() && config.peer_by_site(3).is_none());
        let written = config.to_commented_toml();
        assert_eq!(Config::parse(&written, origin).expect("reads back"), config);
        // With [http] written too, the peers still read back (tables after the keys).
        let mut with_http = config.clone();
        with_http.http = Some(HttpConfig {
            listen: addr("127.0.0.1:8780"),
            allow_remote: false,
        });
        let written = with_http.to_commented_toml();
        assert_eq!(
            Config::parse(&written, origin).expect("reads back"),
            with_http
        );
        // Unset: nothing listens, no peer; the file says how to set them.
        let bare = site().to_commented_toml();
        assert!(
            bare.contains("# peer_listen = ") && bare.contains("# [[peer]]"),
            "{bare}"
        );
        let read = Config::parse(&bare, origin).expect("reads back");
        assert_eq!((read.peer_listen, read.peers.len()), (None, 0));
        // A reload names the listener and discovery as waiting for a restart; the peer list
        // is the file's at once.
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).expect("write");
        let mut running = config.clone();
        running.lease_hours = None;
        running.log_format = LogFormat::Text;
        let (now, restart) = running.reload(&path).expect("same");
        assert!(restart.is_empty(), "{restart:?}");
        assert_eq!(now.peers, config.peers);
        std::fs::write(
            &path,
            text.replace("site = 7", "site = 8")
                .replace("4434\"\ndiscover", "4435\"\ndiscover")
                .replace("discover = false", "discover = true"),
        )
        .expect("write");
        let (now, restart) = running.reload(&path).expect("changed");
        assert_eq!(restart, ["peer_listen", "discover"]);
        assert_eq!(now.peers[1].site, 8, "the peers in force are the file's");
    }

    /// Each bad peer setting is refused with what is wrong.
    #[test]
    fn bad_peer_settings_are_refused_clearly() {
        let site = "role = \"site\"\nhost_address = \"127.0.0.1:1\"\n";
        let check = |text: &str, needle: &str| {
            let err = Config::parse(text, Path::new("carnet.toml"))
                .expect_err(text)
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        };
        let one = |name: &str, address: &str, site_id: &str| {
            format!("\n[[peer]]\nname = \"{name}\"\naddress = \"{address}\"\nsite = {site_id}\n")
        };
        check(&format!("{site}discover = \"yes\"\n"), "discover");
        check(&format!("{site}peer_listen = \"nowhere\"\n"), "peer_listen");
        check(
            &format!("{site}peer_listen = \"127.0.0.1:0\"\n"),
            "has no port",
        );
        check(
            "role = \"host\"\nlisten = \"127.0.0.1:1\"\npeer_listen = \"127.0.0.1:4434\"\n",
            "are for sites",
        );
        check(
            &format!(
                "role = \"host\"\nlisten = \"127.0.0.1:1\"\n{}",
                one("a", "127.0.0.1:2", "3")
            ),
            "are for sites",
        );
        let long = "x".repeat(PEER_NAME_MAX + 1);
        // Each case: the peers listed (name, address, site), and what the refusal says.
        type Listed<'a> = &'a [(&'a str, &'a str, &'a str)];
        let cases: [(Listed, &str); 12] = [
            (&[("", "127.0.0.1:2", "3")], "name ''"),
            (&[("a b", "127.0.0.1:2", "3")], "name 'a b'"),
            (&[(&long, "127.0.0.1:2", "3")], "1 to 64"),
            (&[("a", "127.0.0.1", "3")], "address"),
            (&[("a", "0.0.0.0:4434", "3")], "not one to dial"),
            (&[("a", "127.0.0.1:0", "3")], "not one to dial"),
            (&[("a", "127.0.0.1:2", "0")], "site = 0"),
            (&[("a", "127.0.0.1:2", "-1")], "site"),
            (
                &[("a", "127.0.0.1:2", "3"), ("a", "127.0.0.1:3", "4")],
                "'a' comes twice",
            ),
            (
                &[("a", "127.0.0.1:2", "3"), ("b", "127.0.0.1:3", "3")],
                "a and b both name site 3",
            ),
            (
                &[("a", "127.0.0.1:2", "3"), ("b", "127.0.0.1:2", "4")],
                "a and b both have address 127.0.0.1:2",
            ),
            (
                &[("a", "127.0.0.1:2", "3"), ("é", "127.0.0.1:3", "4")],
                "name 'é'",
            ),
        ];
        for (peers, needle) in cases {
            let listed: String = peers.iter().map(|(n, a, id)| one(n, a, id)).collect();
            check(&format!("{site}{listed}"), needle);
        }
        check(
            &format!("{site}\n[[peer]]\nname = \"a\"\naddress = \"127.0.0.1:2\"\n"),
            "site",
        );
        check(
            &format!(
                "{site}\n[[peer]]\nname = \"a\"\naddress = \"127.0.0.1:2\"\nsite = 3\nport = 1\n"
            ),
            "port",
        );
        // `n` peers, each with a name, address and site of its own.
        let peers = |n: u32| -> String {
            (1..=n)
                .map(|i| {
                    one(
                        &format!("p{i}"),
                        &format!("127.0.0.1:{}", 1000 + i),
                        &i.to_string(),
                    )
                })
                .collect()
        };
        check(
            &format!("{site}{}", peers(PEERS_MAX as u32 + 1)),
            "at most 256",
        );
        // Within the bounds, accepted.
        let most = format!("{site}{}", peers(PEERS_MAX as u32));
        assert!(Config::parse(&most, Path::new("c")).is_ok());
    }
}
