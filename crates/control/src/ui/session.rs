//! Console sessions: a random token in an `HttpOnly`, `SameSite=Strict` cookie names a
//! session held here, in memory, with its own CSRF token that every form that changes
//! something must echo. Sessions end on sign-out, a lifetime after sign-in
//! (`--ui-session-ttl-s`, 8 hours by default), or when the control plane restarts. Bounded: at most [`MAX_SESSIONS`]; opening one more drops the one that
//! would expire first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::HeaderMap;

use crate::control::{random_hex, secret_eq};

/// The session cookie's name.
pub const COOKIE: &str = "ferry_session";
/// Most sessions held at once.
pub const MAX_SESSIONS: usize = 256;

/// A signed-in caller: its session token and the CSRF token its forms carry.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The cookie's value.
    pub token: String,
    /// The session's CSRF token.
    pub csrf: String,
}

/// What a request's cookie names.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A live session.
    Valid(Signed),
    /// A session that has expired (now forgotten).
    Expired,
    /// No cookie, or one naming no session.
    Missing,
}

#[derive(Debug)]
struct Entry {
    csrf: String,
    /// Monotonic seconds (the control plane's clock) it expires at.
    expires: f64,
}

/// The open sessions.
#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<String, Entry>>,
    /// How long a session lasts after sign-in (absolute, not sliding).
    ttl: Duration,
}

impl Sessions {
    /// No session yet; each will last `ttl`.
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        match self.map.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Opens a session at monotonic second `now`.
    pub fn open(&self, now: f64) -> Signed {
        let signed = Signed {
            token: random_hex(32),
            csrf: random_hex(32),
        };
        let mut map = self.map();
        map.retain(|_, e| e.expires > now);
        while map.len() >= MAX_SESSIONS {
            let first = map
                .iter()
                .min_by(|a, b| a.1.expires.total_cmp(&b.1.expires))
                .map(|(k, _)| k.clone());
            match first {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(
            signed.token.clone(),
            Entry {
                csrf: signed.csrf.clone(),
                expires: now + self.ttl.as_secs_f64(),
            },
        );
        signed
    }

    /// The session `token` names at monotonic second `now`.
    pub fn lookup(&self, token: Option<&str>, now: f64) -> Lookup {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Lookup::Missing;
        };
        let mut map = self.map();
        match map.get(token) {
            None => Lookup::Missing,
            Some(e) if e.expires <= now => {
                map.remove(token);
                Lookup::Expired
            }
            Some(e) => Lookup::Valid(Signed {
                token: token.to_owned(),
                csrf: e.csrf.clone(),
            }),
        }
    }

    /// Ends a session (sign-out).
    pub fn close(&self, token: &str) {
        self.map().remove(token);
    }

    /// Open sessions (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Signed {
    /// Whether a form's `csrf` field is this session's token (constant time).
    pub fn csrf_ok(&self, given: Option<&str>) -> bool {
        secret_eq(given, &self.csrf)
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The `Set-Cookie` value that opens a session lasting `ttl` (`secure` when served over HTTPS).
pub fn set_cookie(token: &str, ttl: Duration, secure: bool) -> String {
    format!(
        "{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
        ttl.as_secs().max(1),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that clears the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sessions_expire_close_and_stay_bounded() {
        let s = Sessions::new(Duration::from_secs(100));
        let a = s.open(0.0);
        assert!(matches!(s.lookup(Some(&a.token), 10.0), Lookup::Valid(x) if x.csrf == a.csrf));
        assert!(matches!(s.lookup(Some("nope"), 10.0), Lookup::Missing));
        assert!(matches!(s.lookup(None, 10.0), Lookup::Missing));
        let ttl = 100.0;
        assert!(matches!(s.lookup(Some(&a.token), ttl), Lookup::Expired));
        // Forgotten once seen expired.
        assert!(matches!(s.lookup(Some(&a.token), ttl), Lookup::Missing));
        let b = s.open(1.0);
        s.close(&b.token);
        assert!(matches!(s.lookup(Some(&b.token), 2.0), Lookup::Missing));
        for i in 0..MAX_SESSIONS + 10 {
            s.open(2.0 + i as f64 / 1000.0);
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(a.csrf_ok(Some(&a.csrf)));
        assert!(!a.csrf_ok(Some(&b.csrf)));
        assert!(!a.csrf_ok(None));
    }

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "a=1; ferry_session=abc ; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
        let c = set_cookie("t", Duration::from_secs(60), true);
        assert!(c.contains("HttpOnly; SameSite=Strict; Max-Age=60"), "{c}");
        assert!(c.ends_with("; Secure"));
    }
}
