//! [`PgTarget`]: a validated PostgreSQL URL, shown without its password.

use std::fmt;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::Config;

/// Where the database is: the parsed URL, and how logs and errors name it
/// (`postgres://USER@HOST:PORT/DATABASE`, never the password). `Debug` and `Display` print
/// that name only.
#[derive(Clone)]
pub struct PgTarget {
    config: Config,
    shown: String,
}

impl PgTarget {
    /// Parses a `postgres://` or `postgresql://` URL
    /// (`postgres://USER:PASSWORD@HOST:PORT/DATABASE?OPTION=VALUE`). The error never repeats
    /// the URL: it may hold a password.
    pub fn parse(url: &str) -> Result<PgTarget, String> {
        let url = url.trim();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(
                "must be a postgres:// or postgresql:// URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE)"
                    .into(),
            );
        }
        let mut config: Config = url.parse().map_err(|e: tokio_postgres::Error| {
            // The parser's causes name an option or a position, except "unexpected character",
            // which quotes one: that one could come from the password.
            let cause = std::error::Error::source(&e)
                .map(ToString::to_string)
                .filter(|c| !c.contains("unexpected character"))
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            format!("not a valid PostgreSQL URL{cause} (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE)")
        })?;
        if config.get_hosts().is_empty() {
            return Err(
                "the URL names no host (postgres://USER:PASSWORD@HOST:PORT/DATABASE)".into(),
            );
        }
        if config.get_ssl_mode() == SslMode::Require {
            return Err(
                "sslmode=require: this build connects without TLS; use a TLS-terminating proxy on \
                 the same host, or sslmode=disable on a trusted network"
                    .into(),
            );
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A database host that vanishes (no RST) is noticed within a minute even with no
        // write under way.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("ferry-control");
        }
        let shown = shown(&config);
        Ok(PgTarget { config, shown })
    }

    /// The connection settings.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The URL without its password, for logs and errors.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

fn shown(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            match h {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or_default();
    format!("postgres://{user}{}/{db}", hosts.join(","))
}

impl fmt::Display for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PgTarget").field(&self.shown).finish()
    }
}

/// A client error with its causes (`tokio_postgres::Error`'s `Display` is the kind alone:
/// "db error"), safe to log: the server's messages and I/O errors never carry the password.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db, db.code().code());
    }
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn shown_without_password() {
        let t = PgTarget::parse("postgres://ferry:s3cret-pw@db.example:6543/state").unwrap();
        assert_eq!(t.shown(), "postgres://ferry@db.example:6543/state");
        assert_eq!(t.to_string(), t.shown());
        assert!(!format!("{t:?}").contains("s3cret"));
        let t = PgTarget::parse("postgresql://u@localhost/db?password=s3cret").unwrap();
        assert_eq!(t.shown(), "postgres://u@localhost:5432/db");
        let t = PgTarget::parse("postgres://u:p@[::1]:5433/db").unwrap();
        assert_eq!(t.shown(), "postgres://u@[::1]:5433/db");
        assert_eq!(
            t.config().get_application_name(),
            Some("ferry-control"),
            "the server's pg_stat_activity names us"
        );
    }

    #[test]
    fn refused_without_repeating_the_url() {
        for url in [
            "mysql://u:s3cret@h/db",
            "postgres://u:s3cret@h:notaport/db",
            "postgres://u:s3cret@h/db?sslmode=require",
            "postgres://u:s3cret@h/db?bogus_option=1",
            "s3cret",
        ] {
            let e = PgTarget::parse(url).unwrap_err();
            assert!(!e.contains("s3cret"), "{url}: {e}");
        }
        assert!(PgTarget::parse("postgres://u:p@h:x/db")
            .unwrap_err()
            .contains("port"));
    }
}
