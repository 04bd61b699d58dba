//! Finding peer sites on the local network (`discover = true` in `carnet.toml`): the ambulance
//! arriving on the clinic's Wi-Fi finds the clinic without a `[[peer]]` entry. mDNS / DNS-SD
//! (`mdns-sd`), service type `_carnet-peer._udp.local.`: each site that discovers also
//! announces itself, as instance `carnet-site-N`, with TXT `site=N` and `name=NAME` (its
//! replica's name), on its `peer_listen` port (0 when it does not listen: it dials only).
//!
//! Invariants: what the network announces is never trusted: it only says which site id to
//! expect where. A discovered site is admitted to a peer session exactly as a listed one is,
//! by the site id in a certificate the national CA issued and the host has not revoked
//! (`transport::PeerPolicy`), and the dialler requires the certificate of the site id it found;
//! an announcement of this site's own id, or one whose TXT is malformed, is ignored; a name
//! two discovered sites announce is refused as ambiguous, and a `[[peer]]` entry of that name
//! wins over any announcement. Nothing about patients is announced: a site id, a site's name
//! and a port.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};

use crate::error::{Error, Result};

/// The DNS-SD service type of a site's `peer_listen`.
pub const SERVICE_TYPE: &str = "_carnet-peer._udp.local.";
/// How long `carnet handover` without a daemon listens for a peer it does not list.
pub const FIND_WAIT: Duration = Duration::from_secs(5);

/// A site found on the local network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its site id, as announced (its certificate must name it).
    pub site: u32,
    /// Its name, as announced.
    pub name: String,
    /// Where it listens for peers (port 0: it does not).
    pub address: SocketAddr,
}

/// This site's presence on the local network: its announcement, and the sites it found.
pub struct Discovery {
    mdns: ServiceDaemon,
    found: Arc<(Mutex<BTreeMap<String, Found>>, Condvar)>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("found", &self.sites())
            .finish()
    }
}

impl Discovery {
    /// Announces site `own` named `name` (listening on `listen`, if it does) and starts
    /// listening for the other sites' announcements.
    pub fn start(own: u32, name: &str, listen: Option<SocketAddr>) -> Result<Arc<Discovery>> {
        let failed = |e: mdns_sd::Error| Error::Invalid(format!("discover = true: mDNS: {e}"));
        let mdns = ServiceDaemon::new().map_err(failed)?;
        let instance = format!("carnet-site-{own}");
        let ip = listen
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified())
            .map_or_else(String::new, |ip| ip.to_string());
        let properties = [("site", own.to_string()), ("name", name.to_string())];
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &format!("{instance}.local."),
            ip.as_str(),
            listen.map_or(0, |a| a.port()),
            &properties[..],
        )
        .map_err(failed)?;
        let info = if ip.is_empty() {
            info.enable_addr_auto()
        } else {
            info
        };
        mdns.register(info).map_err(failed)?;
        let events = mdns.browse(SERVICE_TYPE).map_err(failed)?;
        let found = Arc::new((Mutex::new(BTreeMap::new()), Condvar::new()));
        let seen = found.clone();
        // Ends when the mDNS daemon shuts down (its channel closes).
        std::thread::Builder::new()
            .name("carnet-discovery".into())
            .spawn(move || {
                while let Ok(event) = events.recv() {
                    let (lock, changed) = &*seen;
                    let Ok(mut map) = lock.lock() else { return };
                    match event {
                        ServiceEvent::ServiceResolved(service) => {
                            match announced(&service, own) {
                                Some(site) => {
                                    tracing::info!(peer = site.site, address = %site.address, "a site found on the local network");
                                    map.insert(service.fullname.clone(), site);
                                }
                                None => tracing::debug!(
                                    "an announcement on the local network was ignored"
                                ),
                            }
                        }
                        ServiceEvent::ServiceRemoved(_, fullname) => {
                            map.remove(&fullname);
                        }
                        _ => {}
                    }
                    changed.notify_all();
                }
            })
            .map_err(Error::Io)?;
        Ok(Arc::new(Discovery { mdns, found }))
    }

    /// The site ids found on the local network now.
    pub fn sites(&self) -> Vec<u32> {
        self.found
            .0
            .lock()
            .map(|m| m.values().map(|f| f.site).collect())
            .unwrap_or_default()
    }

    /// True when site `site` is found on the local network now.
    pub fn admits(&self, site: u32) -> bool {
        self.sites().contains(&site)
    }

    /// The site announcing itself as `name` (its name, or `site-N`), waiting up to `wait` for
    /// it to be found; refused when two sites announce that name, or when it does not listen.
    pub fn find(&self, name: &str, wait: Duration) -> Result<Found> {
        let deadline = Instant::now() + wait;
        let (lock, changed) = &*self.found;
        let mut map = lock
            .lock()
            .map_err(|_| Error::Invalid("mDNS: the discovery thread failed".into()))?;
        loop {
            let matching: Vec<&Found> = map
                .values()
                .filter(|f| f.name == name || format!("site-{}", f.site) == name)
                .collect();
            match matching.as_slice() {
                [one] if one.address.port() == 0 => {
                    return Err(Error::Invalid(format!(
                        "site {} ('{name}') is on the local network but does not listen for peers (no peer_listen)",
                        one.site
                    )));
                }
                [one] => return Ok((*one).clone()),
                [] => {}
                many => {
                    let sites: Vec<String> = many.iter().map(|f| f.site.to_string()).collect();
                    return Err(Error::Invalid(format!(
                        "sites {} all call themselves '{name}' on the local network: list the one meant as a [[peer]] (name, address, site)",
                        sites.join(", ")
                    )));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Invalid(format!(
                    "no [[peer]] named '{name}' in carnet.toml, and no site called '{name}' found on the local network (mDNS) within {} s",
                    wait.as_secs()
                )));
            }
            map = changed
                .wait_timeout(map, deadline - now)
                .map_err(|_| Error::Invalid("mDNS: the discovery thread failed".into()))?
                .0;
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        // Says goodbye on the network; the thread ends with the daemon.
        let _ = self.mdns.shutdown();
    }
}

/// The site an announcement names, unless it is this site's own or malformed.
fn announced(service: &mdns_sd::ResolvedService, own: u32) -> Option<Found> {
    let addresses: Vec<IpAddr> = service
        .get_addresses()
        .iter()
        .map(|a| a.to_ip_addr())
        .collect();
    found(
        service.get_property_val_str("site"),
        service.get_property_val_str("name"),
        addresses,
        service.port,
        own,
    )
}

/// The site of an announcement's TXT `site` and `name`, addresses and port, unless it is site
/// `own` or malformed.
fn found(
    site: Option<&str>,
    name: Option<&str>,
    mut addresses: Vec<IpAddr>,
    port: u16,
    own: u32,
) -> Option<Found> {
    let site: u32 = site?.parse().ok()?;
    let name = name?;
    if site == own || name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return None;
    }
    // IPv4 first, then IPv6; the lowest of each for a stable choice.
    addresses.sort_by_key(|a| (a.is_ipv6(), *a));
    Some(Found {
        site,
        name: name.to_string(),
        address: SocketAddr::new(*addresses.first()?, port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_is_taken_only_when_whole_and_not_this_sites_own() {
        let v4: IpAddr = "192.0.2.7".parse().expect("ip");
        let v6: IpAddr = "2001:db8::7".parse().expect("ip");
        let clinic = found(Some("8"), Some("clinique"), vec![v6, v4], 4434, 7).expect("found");
        assert_eq!(
            clinic,
            Found {
                site: 8,
                name: "clinique".into(),
                address: SocketAddr::new(v4, 4434),
            },
            "IPv4 first"
        );
        for (site, name, addresses) in [
            (Some("7"), Some("me"), vec![v4]),
            (Some("eight"), Some("clinique"), vec![v4]),
            (Some("-1"), Some("clinique"), vec![v4]),
            (None, Some("clinique"), vec![v4]),
            (Some("8"), None, vec![v4]),
            (Some("8"), Some(""), vec![v4]),
            (Some("8"), Some("a\nb"), vec![v4]),
            (Some("8"), Some(&"x".repeat(65)), vec![v4]),
            (Some("8"), Some("clinique"), vec![]),
        ] {
            assert_eq!(
                found(site, name, addresses, 4434, 7),
                None,
                "{site:?} {name:?}"
            );
        }
    }
}
