//! The status page for the people in the clinic (`http`, `GET /?token=…`): one HTML page, in
//! French, built here from the same values as `carnet sync status` (a site) and `carnet sites`
//! (the host). It refreshes itself every `REFRESH_S` seconds (a meta refresh: no script), and
//! everything it needs is in it (inline style, no script, font, image or link fetched anywhere).
//!
//! Invariants: it shows counts, ids, dates and the site's own name, never a patient's name,
//! INS, title or document; every value written into it goes through `escape` (the site names
//! come from the register, the versions from the sites' `Hello`); each figure a test compares
//! with `sync status` carries a `data-figure` attribute naming it.

use std::fmt::Write;

use carnet_store::time::{Millis, format_rfc3339};

use crate::api::SyncStatus;
use crate::fleet::SiteOverview;

/// Seconds between two refreshes of the page.
pub const REFRESH_S: u32 = 10;

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b;background:#f6f6f6}\
h1{font-size:1.4rem;margin:0 0 .3rem}p.sub{color:#555;margin:0 0 1rem}\
.etat{display:inline-block;padding:.4rem .8rem;border-radius:.4rem;font-weight:600;margin-bottom:1rem}\
.ok{background:#d8f0dc;color:#14532d}.ko{background:#fde2e1;color:#7f1d1d}.att{background:#fff1c2;color:#713f12}\
table{border-collapse:collapse;background:#fff;margin:.5rem 0 1.2rem;min-width:30rem}\
th,td{border:1px solid #ccc;padding:.35rem .6rem;text-align:left;vertical-align:top}\
th{background:#eceff3}td.n{text-align:right;font-variant-numeric:tabular-nums}\
h2{font-size:1.1rem;margin:1.2rem 0 .3rem}small{color:#555}footer{color:#666;font-size:.85rem}";

fn page(title: &str, body: &str, now: Millis) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"fr\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{title}</title><style>{STYLE}</style></head><body>{body}\
         <footer>Page mise à jour toutes les {REFRESH_S} secondes — état au {} (heure UTC). \
         Aucune donnée de patient n'est affichée ici : seulement des nombres.</footer></body></html>\n",
        when(now)
    )
}

/// A date for people: `02/12/2026 à 23:10:05`.
fn when(ms: Millis) -> String {
    let t = format_rfc3339(ms);
    // YYYY-MM-DDTHH:MM:SS.mmmZ
    match (t.get(0..4), t.get(5..7), t.get(8..10), t.get(11..19)) {
        (Some(y), Some(m), Some(d), Some(hms)) => format!("{d}/{m}/{y} à {hms}"),
        _ => t,
    }
}

/// A duration for people: `2 j 3 h`, `5 h 12 min`, `40 s`.
fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    if d > 0 {
        format!("{d} j {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min")
    } else {
        format!("{s} s")
    }
}

/// What a failure means, in plain French, by its kind (`fleet::error_kind`).
pub fn plain_error(kind: &str) -> &'static str {
    match kind {
        "network" => {
            "Le serveur national n'a pas pu être joint (réseau coupé ou serveur arrêté). Rien n'est perdu : les données attendent ici et partiront au retour de la liaison."
        }
        "certificate" => {
            "Le certificat de ce poste a été refusé ou n'est plus valable. Contactez l'assistance pour le renouveler."
        }
        "integrity" => {
            "Une altération des données a été détectée et l'échange a été arrêté. Contactez l'assistance."
        }
        "store" => "La base locale a refusé ou n'a pas pu enregistrer une opération.",
        _ => {
            "Le serveur national a refusé l'échange (poste révoqué, version différente ou demande non conforme)."
        }
    }
}

/// The rows of a two-column table: label, figure name (or none), value, and why.
fn rows(out: &mut String, rows: &[(&str, Option<&str>, String, String)]) {
    out.push_str("<table><tr><th>Élément</th><th>Nombre / valeur</th><th>Pourquoi</th></tr>");
    for (label, figure, value, why) in rows {
        let attr = figure.map_or_else(String::new, |f| format!(" data-figure=\"{f}\""));
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"n\"{attr}>{}</td><td>{}</td></tr>",
            escape(label),
            escape(value),
            escape(why)
        );
    }
    out.push_str("</table>");
}

fn kind_fr(kind: &str) -> &str {
    match kind {
        "document" => "documents",
        "professional" => "professionnels",
        "purge-receipt" => "accusés de purge",
        "pin" => "demandes d'accès à un dossier",
        other => other,
    }
}

/// A site's page: its link, what waits to go out and why, its lease, its recent errors.
pub fn site(name: &str, s: &SyncStatus, lease_ms: Option<Millis>, now: Millis) -> String {
    let link = s.link.clone().unwrap_or_default();
    let mut b = format!(
        "<h1>Carnet — {}</h1><p class=\"sub\">État de la synchronisation avec le serveur national du DMP</p>",
        escape(name)
    );
    let (class, state) = if link.connected {
        ("ok", "Connecté au serveur national")
    } else {
        ("ko", "Hors ligne : le serveur national n'est pas joint")
    };
    let _ = write!(
        b,
        "<div class=\"etat {class}\" data-figure=\"connected\" data-value=\"{}\">{state}</div>",
        link.connected
    );
    let _ = write!(
        b,
        "<p>Dernière synchronisation réussie : <strong data-figure=\"last_sync\">{}</strong></p>",
        link.last_sync.map_or_else(
            || "jamais depuis le démarrage du service".to_string(),
            |t| format!("le {} (il y a {})", when(t), duration(now - t))
        )
    );
    match lease_ms.filter(|_| s.authority_as_of > 0) {
        Some(lease) => {
            let left = s.authority_as_of + lease - now;
            let (class, text) = if s.lease_expired || left <= 0 {
                (
                    "ko",
                    "Bail expiré : les lectures normales sont refusées, seul le bris de glace reste possible (et il est tracé). Rétablissez la liaison.".to_string(),
                )
            } else {
                (
                    if left < 12 * 3_600_000 { "att" } else { "ok" },
                    format!(
                        "Bail : il reste {} (jusqu'au {}) avant que les lectures normales ne soient refusées sans nouvelles du serveur national.",
                        duration(left),
                        when(s.authority_as_of + lease)
                    ),
                )
            };
            let _ = write!(
                b,
                "<div class=\"etat {class}\" data-figure=\"lease_remaining_s\" data-value=\"{}\">{}</div>",
                left / 1000,
                escape(&text)
            );
        }
        None => b.push_str(
            "<div class=\"etat att\">Bail : pas encore confirmé par le serveur national.</div>",
        ),
    }
    b.push_str("<h2>Ce qui attend de partir</h2>");
    let waiting = if link.connected {
        "envoi à la prochaine synchronisation (quelques secondes)"
    } else {
        "en attente du retour de la liaison"
    };
    let by_kind = if s.pending_by_kind.is_empty() {
        String::new()
    } else {
        format!(
            " ({})",
            s.pending_by_kind
                .iter()
                .map(|(k, n)| format!("{} : {n}", kind_fr(k)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    rows(
        &mut b,
        &[
            (
                "Modifications à envoyer",
                Some("pending"),
                s.pending.to_string(),
                format!("{waiting}{by_kind}"),
            ),
            (
                "Entrées du journal des accès à envoyer",
                Some("pending_traces"),
                s.pending_traces
                    .map_or_else(|| "?".into(), |n| n.to_string()),
                "chaque consultation est tracée et remonte au serveur national".into(),
            ),
            (
                "Retenus en quarantaine",
                Some("quarantine"),
                s.quarantine.len().to_string(),
                "renvoyés par le serveur national (dossier fermé ou modification refusée) : à examiner, ils ne repartiront pas seuls".into(),
            ),
            (
                "Conflits",
                Some("conflicts"),
                s.conflicts.len().to_string(),
                "un même document remplacé à deux endroits : les deux versions sont gardées, à départager".into(),
            ),
        ],
    );
    b.push_str("<h2>Ce qui attend d'arriver</h2>");
    rows(
        &mut b,
        &[
            (
                "Modifications du serveur national pas encore reçues",
                Some("cursor_lag"),
                s.cursor_lag.map_or_else(|| "?".into(), |n| n.to_string()),
                "à la dernière synchronisation".into(),
            ),
            (
                "Contenus de documents pas encore reçus",
                Some("missing_bodies"),
                s.missing_bodies.to_string(),
                "les documents sont listés, leur contenu arrive ensuite".into(),
            ),
        ],
    );
    b.push_str("<h2>Dossier de dépôt (logiciel du cabinet)</h2>");
    match (&s.inbox, &s.inbox_error) {
        (Some(inbox), _) => rows(
            &mut b,
            &[
                (
                    "Fichiers refusés",
                    Some("inbox_rejected"),
                    inbox.rejected.to_string(),
                    "dans rejected/, chacun avec la raison et ce qu'il faut faire : `carnet inbox list`".into(),
                ),
                (
                    "Fichiers sans leur fiche (ou fiches sans leur fichier)",
                    Some("inbox_orphans"),
                    inbox.orphans.len().to_string(),
                    "déposés depuis plus de dix minutes sans l'autre moitié de la paire : vérifier le logiciel qui dépose".into(),
                ),
                (
                    "Anciens fichiers en clair dans done/",
                    Some("inbox_unclaimed"),
                    inbox.unclaimed.len().to_string(),
                    "laissés par une version précédente, sans document correspondant ici : à examiner puis supprimer".into(),
                ),
            ],
        ),
        (None, Some(_)) => b.push_str(
            "<div class=\"etat ko\" data-figure=\"inbox_error\">Le dossier de dépôt ne peut pas être lu : voir `carnet sync status`.</div>",
        ),
        (None, None) => {}
    }
    b.push_str("<h2>Erreurs récentes</h2>");
    if link.recent_errors.is_empty() {
        b.push_str(
            "<p data-figure=\"recent_errors\">Aucune erreur depuis le démarrage du service.</p>",
        );
    } else {
        b.push_str("<table data-figure=\"recent_errors\"><tr><th>Quand</th><th>Ce qui s'est passé</th></tr>");
        for (at, kind, detail) in link.recent_errors.iter().rev() {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}<br><small>Détail technique : {}</small></td></tr>",
                when(*at),
                escape(plain_error(kind)),
                escape(detail)
            );
        }
        b.push_str("</table>");
    }
    page(&format!("Carnet — {}", escape(name)), &b, now)
}

/// The host's page: the sites table of `carnet sites`.
pub fn host(name: &str, sites: &[SiteOverview], now: Millis) -> String {
    let connected = sites.iter().filter(|s| s.connected).count();
    let mut b = format!(
        "<h1>Carnet — {} (serveur national)</h1><p class=\"sub\">Sites enrôlés : <strong data-figure=\"sites\">{}</strong>, connectés : <strong data-figure=\"sites_connected\">{connected}</strong></p>",
        escape(name),
        sites.len()
    );
    b.push_str(
        "<table><tr><th>Site</th><th>Nom</th><th>État</th><th>Dernier contact</th><th>Version</th>\
         <th>À récupérer</th><th>À envoyer</th><th>Journal non envoyé</th><th>Bail restant</th>\
         <th>Quarantaine</th><th>Demandes en attente</th><th>Dernière erreur</th></tr>",
    );
    let n = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |n| n.to_string());
    for s in sites {
        let (class, state) = if s.revoked {
            ("ko", "révoqué")
        } else if s.connected {
            ("ok", "connecté")
        } else {
            ("att", "hors ligne")
        };
        let _ = write!(
            b,
            "<tr data-site=\"{}\"><td class=\"n\">{}</td><td>{}</td><td class=\"{class}\" data-figure=\"state\">{state}</td>\
             <td>{}</td><td>{}</td><td class=\"n\" data-figure=\"changes_not_pulled\">{}</td>\
             <td class=\"n\" data-figure=\"changes_not_pushed\">{}</td><td class=\"n\" data-figure=\"traces_not_sent\">{}</td>\
             <td>{}</td><td class=\"n\" data-figure=\"quarantine\">{}</td><td class=\"n\" data-figure=\"pending\">{}</td><td>{}</td></tr>",
            s.site,
            s.site,
            escape(&s.name),
            s.last_contact.map_or_else(|| "jamais".to_string(), when),
            escape(s.version.as_deref().unwrap_or("?")),
            n(s.changes_not_pulled),
            n(s.changes_not_pushed),
            n(s.traces_not_sent),
            s.lease_until.map_or_else(
                || "?".to_string(),
                |t| if t <= now {
                    "expiré".to_string()
                } else {
                    duration(t - now)
                }
            ),
            n(s.quarantine),
            s.pending_grants + s.pending_pins,
            s.last_error.as_ref().map_or_else(
                || "aucune".to_string(),
                |(at, e)| format!("{} : {}", when(*at), escape(e))
            ),
        );
    }
    b.push_str("</table>");
    page(&format!("Carnet — {}", escape(name)), &b, now)
}

/// The page without its token.
pub fn refused() -> String {
    page(
        "Carnet — accès refusé",
        "<h1>Accès refusé</h1><p>Cette page demande son jeton. Ouvrez l'adresse complète que donne la commande <code>carnet ui</code> sur ce poste.</p>",
        0,
    )
    .replace(" — état au 01/01/1970 à 00:00:00 (heure UTC)", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_durations_read_well() {
        assert_eq!(
            escape("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(duration(40_000), "40 s");
        assert_eq!(duration(5 * 3_600_000 + 12 * 60_000), "5 h 12 min");
        assert_eq!(duration(2 * 86_400_000 + 3 * 3_600_000), "2 j 3 h");
        assert_eq!(when(0), "01/01/1970 à 00:00:00");
    }

    #[test]
    fn a_site_name_with_markup_is_shown_as_text() {
        let s = SiteOverview {
            site: 7,
            name: "<img src=x onerror=alert(1)>".into(),
            finess: "750000001".into(),
            revoked: false,
            connected: true,
            last_contact: None,
            version: Some("0.1.0".into()),
            log_head: 0,
            changes_not_pulled: Some(0),
            bodies_not_pulled: None,
            changes_not_pushed: None,
            traces_not_sent: None,
            bodies_owed: 0,
            returned: 0,
            lease_until: None,
            quarantine: None,
            conflicts: None,
            pending_grants: 0,
            pending_pins: 0,
            rounds: 0,
            bytes_received: 0,
            bytes_sent: 0,
            errors: Default::default(),
            last_error: None,
            link: None,
        };
        let html = host("hôte", &[s], 0);
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;img src=x"), "{html}");
    }
}
