//! The integration tests of Carnet: one binary, each module a theme, every test
//! driving the real `carnet` binary in its own temporary folders.
//!
//! - `cli_basics`: init, data folder, passphrases, professionals, dossiers, grants, emergency
//!   preferences, the trace.
//! - `documents`: document commands, bytes in and out, metadata.
//! - `grants`: the one médecin traitant of a dossier; grants that end, at an offline site.
//! - `policy_cli`: the access decision table of DOMAIN §4, end to end, with its traces.
//! - `progress`: progress bars on a terminal only, never for a pipe or `--json`.
//! - `secrecy`: no patient data in clear in any file of a data folder.
//! - `tampering`: damage at rest (redb edited directly) and in transit (bundles), format versions.
//! - `purge`: closure, host purge, site purge on import.
//! - `retention`: ten years of archiving before a purge, the holder's deletion request, and
//!   reopening, through a host and two site daemons.
//! - `reads`: `dossier show`, `dossier list`, `audit show` as a person (`--as`), decided and traced.
//! - `inbox`: `carnet inbox list` and `retry`, files alone reported by `sync status`, a
//!   refusal's fix followed through a running daemon.
//! - `help`: every command, option and argument described in `--help`, the main commands' examples.
//! - `keys`: master key rotation.
//! - `export`: the holder's FHIR copy.
//! - `fhir`: FHIR R4 in and out: the export checked by an independent validator, imported back
//!   into a fresh replica (with and without a daemon), FHIR as other systems write it.
//! - `authority`: signed host records on sites.
//! - `daemon`: real `carnet-syncd` daemons, their local API, the demo.
//! - `backup`: `carnet backup` while a daemon runs, `carnet restore`, the restored site's first
//!   round through real daemons; damaged, altered and foreign backups refused.
//! - `service`: `carnet-syncd` as a service: its command line, systemd's notify protocol and
//!   watchdog, reloading its settings, its logs.
//! - `operator`: what the operators see: `carnet sites` at the host, `/metrics`, the status page.
//! - `convergence`: a host and two site daemons: offline writes, conflicts, revocation, closure.
//! - `handover`: a mobile unit hands a dossier to a clinic without the host, through real
//!   daemons; a site not listed as a peer refused; all three converge once the host is back.
//! - `opened_here`: dossiers opened at a site, held for a provisional identity, adopted or
//!   merged by the host.
//! - `faults`: the weak link, through `fault_proxy` (loss, delay, cuts).
//! - `emergencies`: the host's review of break-glass and centre 15 accesses, through two daemons
//!   and a rogue site.
//! - `host_trusts_no_site`: a rogue site with a valid certificate (`rogue`, which speaks the wire
//!   protocol itself) tries to get more than the host authorizes.

mod support;

mod authority;
mod backup;
mod cli_basics;
mod convergence;
mod daemon;
mod documents;
mod emergencies;
mod export;
mod fault_proxy;
mod faults;
mod fhir;
mod grants;
mod handover;
mod help;
mod host_daemons;
mod host_trusts_no_site;
mod inbox;
mod keys;
mod notifications;
mod opened_here;
mod operator;
mod pki;
mod policy_cli;
mod progress;
mod purge;
mod quarantine;
mod reads;
mod regressions;
mod representatives;
mod retention;
mod rogue;
mod secrecy;
mod service;
mod tampering;
